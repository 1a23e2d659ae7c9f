//! A real webhook receiver for tests: an HTTP/1.1 server on 127.0.0.1 (keep-alive, one thread
//! per connection) that records every call — its query parameters and JSON body — and answers
//! as the test says: the default allow/OK, a before-send decision, a status, a delay.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::{Value, json};

/// One call the receiver got.
#[derive(Clone, Debug)]
pub struct Call {
    pub query: HashMap<String, String>,
    pub body: Value,
}

impl Call {
    pub fn command(&self) -> &str {
        self.query
            .get("CallbackCommand")
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// How to answer a call.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn ok(body: Value) -> Answer {
        Answer {
            status: 200,
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
}

type Policy = Box<dyn Fn(&Call) -> Answer + Send>;

pub struct Receiver {
    pub url: String,
    calls: mpsc::Receiver<Call>,
    policy: Arc<Mutex<Policy>>,
    /// Every call, in arrival order (also the down ones).
    pub log: Arc<Mutex<Vec<Call>>>,
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn serve(
    stream: TcpStream,
    policy: Arc<Mutex<Policy>>,
    log: Arc<Mutex<Vec<Call>>>,
    tx: mpsc::Sender<Call>,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut len = 0;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let call = Call {
            query: parse_query(query),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        };
        log.lock().unwrap().push(call.clone());
        let answer = (policy.lock().unwrap())(&call);
        std::thread::sleep(answer.delay);
        let reason = if answer.status == 200 { "OK" } else { "Error" };
        // A redirect's answer says where to: another path of this receiver.
        let location = if (300..400).contains(&answer.status) {
            "Location: /redirected\r\n"
        } else {
            ""
        };
        let reply = format!(
            "HTTP/1.1 {} {reason}\r\n{location}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            answer.status,
            answer.body.len(),
            answer.body
        );
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
        if answer.status == 200 {
            let _ = tx.send(call);
        }
    }
}

/// The usual answer: `{"ActionStatus":"OK","ErrorInfo":"","ErrorCode":0}`.
pub fn ok() -> Answer {
    Answer::ok(json!({"ActionStatus": "OK", "ErrorInfo": "", "ErrorCode": 0}))
}

/// A port of 127.0.0.1 bound for the test but not listening: a connection to it is refused,
/// and no other socket can take it meanwhile (as one could a port found free and released),
/// until [`listen`](HeldPort::listen) makes it a listener.
pub struct HeldPort {
    socket: socket2::Socket,
    pub addr: std::net::SocketAddr,
}

impl HeldPort {
    pub fn new() -> HeldPort {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let addr = socket.local_addr().unwrap().as_socket().unwrap();
        HeldPort { socket, addr }
    }

    pub fn listen(self) -> TcpListener {
        self.socket.listen(128).unwrap();
        self.socket.into()
    }
}

impl Receiver {
    /// A receiver on a free port of 127.0.0.1.
    pub fn start() -> Receiver {
        Receiver::start_on(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    /// A receiver on `listener` (to come up on a port the server already calls).
    pub fn start_on(listener: TcpListener) -> Receiver {
        let url = format!("http://{}/im-callback", listener.local_addr().unwrap());
        let policy: Arc<Mutex<Policy>> = Arc::new(Mutex::new(Box::new(|_| ok())));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, calls) = mpsc::channel();
        {
            let (policy, log) = (policy.clone(), log.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { return };
                    let (policy, log, tx) = (policy.clone(), log.clone(), tx.clone());
                    std::thread::spawn(move || serve(stream, policy, log, tx));
                }
            });
        }
        Receiver {
            url,
            calls,
            policy,
            log,
        }
    }

    /// Answers every call with `f`'s answer from now on.
    pub fn answer_with(&self, f: impl Fn(&Call) -> Answer + Send + 'static) {
        *self.policy.lock().unwrap() = Box::new(f);
    }

    /// The next call answered 200, if one comes within `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Call> {
        self.calls.recv_timeout(timeout).ok()
    }

    /// The next call answered 200 with `command`, skipping others (within `timeout`).
    pub fn next_of(&self, command: &str, timeout: Duration) -> Option<Call> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let call = self.next(left)?;
            if call.command() == command {
                return Some(call);
            }
        }
    }
}
