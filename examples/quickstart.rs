//! Sends a message, connects a device, recalls the message and prints what the device received
//! and what history shows.
//!
//! Run: `cargo run --release --example quickstart`

use imstore::{Config, EventKind, HistoryQuery, MsgElement, SendRequest, Store};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::in_memory(Config::default())?;
    store.import_accounts(&["vinson", "dramon"])?;
    let phone = store.connect("dramon", "phone")?;

    let mut req = SendRequest::new("vinson", "dramon", 833502, vec![MsgElement::text("hello")]);
    req.msg_seq = Some(31906);
    let receipt = store.send(req)?;
    println!("sent     MsgKey {}", receipt.msg_key);

    print_events(&phone)?;

    let notice = store.recall(
        "administrator",
        "vinson",
        "dramon",
        &receipt.msg_key.to_string(),
    )?;
    println!("recalled MsgKey {} by {}", notice.key, notice.recalled_by);
    print_events(&phone)?;

    let page = store.history(&HistoryQuery::new("dramon", "vinson", 20))?;
    for item in &page.messages {
        println!(
            "history: {} MsgFlagBits={} MsgBody={}",
            item.message.key,
            item.message.msg_flag_bits(),
            item.message
                .content
                .as_ref()
                .map_or("[]".into(), |c| c.body_json())
        );
    }
    Ok(())
}

fn print_events(phone: &imstore::Subscription) -> Result<(), imstore::Disconnected> {
    for event in phone.drain()? {
        match event.kind {
            EventKind::Message(m) => {
                println!(
                    "device dramon/phone got #{}: message {} from {}",
                    event.seq, m.key, m.from
                )
            }
            EventKind::Recalled(n) => {
                println!(
                    "device dramon/phone got #{}: Recalled {} by {}",
                    event.seq, n.key, n.recalled_by
                )
            }
            EventKind::Modified { message, .. } => {
                println!(
                    "device dramon/phone got #{}: Modified {}",
                    event.seq, message.key
                )
            }
        }
    }
    Ok(())
}
