//! A device on the WebSocket client channel, for trying the server by hand: prints every frame
//! it receives, confirms every event (`ack`), and sends each line typed on stdin as a frame.
//!
//! ```sh
//! cargo run --release --features server --example device -- \
//!     --account vinson --device phone --usersig "$(target/release/imstore-server --usersig vinson)"
//! # then type, for example:
//! {"Op":"sendmsg","ReqId":1,"To_Account":"dramon","MsgRandom":7,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}
//! ```
//!
//! Options: `--server HOST:PORT` (default 127.0.0.1:8080), `--sdkappid N` (1400000000),
//! `--platform P` (Unknown), `--after SEQ`.

use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() {
    let account = arg("--account").expect("--account NAME");
    let device = arg("--device").expect("--device NAME");
    let usersig = arg("--usersig").expect("--usersig SIG (imstore-server --usersig NAME)");
    let server = arg("--server").unwrap_or_else(|| "127.0.0.1:8080".into());
    let sdkappid = arg("--sdkappid").unwrap_or_else(|| "1400000000".into());
    let platform = arg("--platform").unwrap_or_else(|| "Unknown".into());
    let after = arg("--after").map_or_else(String::new, |a| format!("&after={a}"));
    let url = format!(
        "ws://{server}/v4/imstore/ws?sdkappid={sdkappid}&identifier={account}&usersig={usersig}&device={device}&platform={platform}{after}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (ws, _) = match tokio_tungstenite::connect_async(url).await {
            Ok(c) => c,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                let body = resp.body().as_deref().unwrap_or_default();
                eprintln!("refused: HTTP {} {}", resp.status(), String::from_utf8_lossy(body));
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("cannot connect: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("{account}/{device} connected; type JSON frames, one per line");
        let (mut tx, mut rx) = ws.split();
        let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            tokio::select! {
                frame = rx.next() => {
                    let Some(Ok(frame)) = frame else { break };
                    let Message::Text(text) = frame else { continue };
                    println!("{text}");
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                    if let Some(seq) = v["Seq"].as_u64() {
                        let ack = serde_json::json!({"Op": "ack", "Seq": seq}).to_string();
                        if tx.send(Message::Text(ack.into())).await.is_err() {
                            break;
                        }
                    }
                }
                line = stdin.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    if !line.trim().is_empty() && tx.send(Message::Text(line.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
        eprintln!("disconnected");
    });
}
