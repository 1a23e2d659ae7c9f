//! Seeds a running `imstore-server` for `benches/http/run.sh`: imports the accounts `s0..sP`
//! and `r0..rP`, sends message `i` from `s{i % P}` to `r{i % P}` with MsgSeq = MsgRandom = `i`
//! and MsgTimeStamp = TIME (so its MsgKey is `{i}_{i}_{TIME}`, which `recall.lua` computes),
//! then compacts (a snapshot now rather than during the measurement). Over 64 keep-alive
//! connections, as the administrator.
//!
//! Run: `http_seed ADDR ADMIN_USERSIG PAIRS MESSAGES TIME`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

#[path = "shared/http.rs"]
mod http;
use http::drive;

const APP: u64 = 1400000000;
const CHUNK: usize = 100_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, sig, pairs, messages, time] = &args[..] else {
        eprintln!("usage: http_seed ADDR ADMIN_USERSIG PAIRS MESSAGES TIME");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("ADDR");
    let (pairs, messages): (usize, usize) = (pairs.parse().unwrap(), messages.parse().unwrap());
    let time: u32 = time.parse().expect("TIME: Unix seconds");
    let query =
        format!("sdkappid={APP}&identifier=administrator&usersig={sig}&random=1&contenttype=json");

    let accounts: Vec<String> = (0..pairs)
        .flat_map(|p| [format!("\"s{p}\""), format!("\"r{p}\"")])
        .collect();
    let imports: Vec<(String, String)> = accounts
        .chunks(100)
        .map(|c| {
            (
                "im_open_login_svc/multiaccount_import".to_owned(),
                format!(r#"{{"Accounts":[{}]}}"#, c.join(",")),
            )
        })
        .collect();
    drive(addr, &query, 4, &Arc::new(imports));

    let started = Instant::now();
    for start in (0..messages).step_by(CHUNK) {
        let sends: Vec<(String, String)> = (start..messages.min(start + CHUNK))
            .map(|i| {
                let p = i % pairs;
                let body = format!(
                    r#"{{"From_Account":"s{p}","To_Account":"r{p}","MsgSeq":{i},"MsgRandom":{i},"MsgTimeStamp":{time},"MsgBody":[{{"MsgType":"TIMTextElem","MsgContent":{{"Text":"message {i}"}}}}]}}"#
                );
                ("openim/sendmsg".to_owned(), body)
            })
            .collect();
        drive(addr, &query, 64, &Arc::new(sends));
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {} accounts and {messages} messages in {secs:.1} s ({:.0} sendmsg/s)",
        2 * pairs,
        messages as f64 / secs
    );
    let compact = vec![("imstore/compact".to_owned(), "{}".to_owned())];
    drive(addr, &query, 1, &Arc::new(compact));
}
