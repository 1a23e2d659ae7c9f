// A keep-alive HTTP/1.1 client for the load examples: many connections on one event-loop
// thread, as wrk drives them. Included with `#[path]` by `load.rs` and `webhook_load.rs`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    stream: BufStream<TcpStream>,
    query: String,
}

impl Conn {
    pub async fn open(addr: SocketAddr, query: &str) -> Conn {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream: BufStream::new(stream),
            query: query.to_owned(),
        }
    }

    /// Posts `body` to `api` and returns the ErrorCode of the answer.
    pub async fn call(&mut self, api: &str, body: &str) -> u64 {
        let head = format!(
            "POST /v4/{api}?{} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.query,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await.unwrap();
        self.stream.write_all(body.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut json = vec![0; length];
        self.stream.read_exact(&mut json).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        v["ErrorCode"].as_u64().unwrap()
    }
}

/// Makes every call in `items` over `connections` connections, each with one call in flight,
/// from one client thread (an event loop, as wrk's); returns calls per second.
pub fn drive(
    addr: SocketAddr,
    query: &str,
    connections: usize,
    items: &Arc<Vec<(String, String)>>,
) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = (0..connections)
            .map(|c| {
                let (items, query) = (items.clone(), query.to_owned());
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr, &query).await;
                    for (api, body) in items.iter().skip(c).step_by(connections) {
                        let code = conn.call(api, body).await;
                        assert_eq!(code, 0, "{api} {body}");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    items.len() as f64 / start.elapsed().as_secs_f64()
}

/// A blocking GET of `path` on its own connection (closed after the answer); returns the body.
#[allow(dead_code)]
pub fn get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    match answer.split_once("\r\n\r\n") {
        Some((_, body)) => body.to_owned(),
        None => answer,
    }
}
