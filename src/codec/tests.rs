use super::*;

/// An inbox of 500,000 entries is one record of ~23 MB, under the frame limit, and
/// decodes although it claims ~3 times that in memory (`MAX_IMAGE_CLAIM`): a snapshot
/// holding one could not be read back, and the store could not open.
#[test]
fn an_image_larger_in_memory_than_the_payload_limit_is_read_back() {
    let entries: Vec<EntryImage<'_>> = (0..500_000u64)
        .map(|i| EntryImage {
            seq: 100_000 + i,
            expires_at: 1_700_604_800,
            kind: 0,
            modified_at: 0,
            msg: MsgRef::Roaming {
                from: "sender01",
                to: "receiver",
                key: (i as u32, 3_000_000_000, 1_700_000_000),
            },
        })
        .collect();
    let claim = entries.len() * std::mem::size_of::<EntryImage<'_>>();
    assert!(claim > MAX_PAYLOAD, "{claim}: the case this test is about");
    let img = AccountImage {
        user: "receiver",
        next_seq: 700_000,
        entries,
        devices: vec![],
        unread: vec![],
    };
    let mut bytes = Vec::new();
    encode(&img, &mut bytes);
    assert!(bytes.len() < MAX_PAYLOAD, "{}", bytes.len());
    let back: AccountImage<'_> = decode(&bytes).unwrap();
    assert_eq!(back.entries.len(), 500_000);
    assert_eq!(back.entries[499_999].seq, 599_999);
}

#[test]
fn a_hostile_length_prefix_is_refused_without_allocating() {
    // A string claiming 2^60 bytes.
    let mut bytes = vec![1u8]; // variant DeleteAccount
    bytes.push(253); // varint u64 marker
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(decode_op(&bytes, UserId::new).is_err());
    assert!(decode::<AccountImage>(&[3, 253, 0, 0, 0, 0, 0, 0, 0, 16]).is_err());
    assert!(decode::<AccountImageV1>(&[3, 253, 0, 0, 0, 0, 0, 0, 0, 16]).is_err());
}

#[test]
fn operations_round_trip() {
    let u = |s: &str| UserId::new(s).unwrap();
    let ops = vec![
        Op::ImportAccount { user: u("a") },
        // A delete as journaled since its conversations are marked read, and one from before.
        Op::DeleteAccount {
            user: u("a"),
            read_all: true,
        },
        Op::DeleteAccount {
            user: u("a"),
            read_all: false,
        },
        Op::Send(SendOp {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(1, 2, 3),
            content: Content::new(&[crate::MsgElement::text("hi")], Some("cd")).unwrap(),
            sender_copy: SenderCopy::RoamingAndDevices,
            lifetime: 60,
            origin_device: Some("phone".into()),
            at: 99,
            kind: SendKind::ImportRealtime,
            origin: Some(Origin {
                platform: Platform::Ios,
                client_ip: "10.0.0.7".into(),
            }),
            retention: Some(3600),
            control: SendControl::default(),
            retry_dedup: false,
        }),
        Op::Recall {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(1, 2, 3),
            by: u("admin"),
            at: 100,
            origin: Some(Origin::rest("127.0.0.1")),
            notice: Some(86_400),
        },
        Op::Modify(Box::new(ModifyOp {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(1, 2, 3),
            body: Some(Content::new(&[crate::MsgElement::text("new")], None).unwrap()),
            cloud_custom_data: Some("cd".into()),
            at: 100,
            notice: Some(7200),
        })),
        // As records from before a send's retention and a notice's lifetime were kept
        // decode.
        Op::Send(SendOp {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(4, 5, 6),
            content: Content::new(&[crate::MsgElement::text("old")], None).unwrap(),
            sender_copy: SenderCopy::Roaming,
            lifetime: 60,
            origin_device: None,
            at: 99,
            kind: SendKind::Send,
            origin: None,
            retention: None,
            control: SendControl::default(),
            retry_dedup: false,
        }),
        Op::Recall {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(4, 5, 6),
            by: u("admin"),
            at: 100,
            origin: None,
            notice: None,
        },
        Op::Modify(Box::new(ModifyOp {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(4, 5, 6),
            body: None,
            cloud_custom_data: Some("cd".into()),
            at: 100,
            notice: None,
        })),
        Op::SetRead {
            reader: u("b"),
            peer: u("a"),
            at: 101,
            origin: None,
            until: None,
        },
        Op::OutboxAck { upto: 7 },
        Op::ForgetDevices {
            account: u("b"),
            devices: vec!["phone".into(), "pad".into()],
            at: 102,
            idle: Some(3600),
        },
        Op::PurgeInbox {
            account: u("b"),
            at: 103,
            retention: Some(604_800),
        },
        // As records from before the settings were kept decode.
        Op::ForgetDevices {
            account: u("b"),
            devices: vec!["phone".into()],
            at: 104,
            idle: None,
        },
        Op::PurgeInbox {
            account: u("b"),
            at: 105,
            retention: None,
        },
        Op::SetRead {
            reader: u("b"),
            peer: u("a"),
            at: 106,
            origin: None,
            until: Some(1_700_000_000),
        },
        Op::Send(SendOp {
            from: u("a"),
            to: u("b"),
            key: MsgKey::new(7, 8, 9),
            content: Content::new(&[crate::MsgElement::text("quiet")], None).unwrap(),
            sender_copy: SenderCopy::Roaming,
            lifetime: 60,
            origin_device: None,
            at: 107,
            kind: SendKind::Send,
            origin: None,
            retention: Some(3600),
            control: SendControl {
                no_unread: true,
                no_last_msg: true,
            },
            retry_dedup: false,
        }),
        Op::SeqFloor {
            floor: 1_700_000_000_000_000,
        },
    ];
    // Each record's bytes, as journals and streams hold them: a change to the record types
    // that changes them breaks every journal written before.
    let bytes = [
        "000161",
        "180161",
        "010161",
        "1301610162010203365b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a226869227d7d5d01026364013c010570686f6e65630501030831302e302e302e37fb100e",
        "14016101620102030561646d696e640100093132372e302e302e31fc80510100",
        "150161016201020301375b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a226e6577227d7d5d0102636464fb201c",
        "0d01610162040506375b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a226f6c64227d7d5d00003c00630000",
        "0e016101620405060561646d696e6400",
        "0401610162040506000102636464",
        "0f016201616500",
        "1007",
        "110162020570686f6e650370616466fb100e",
        "12016267fc803a0900",
        "0c0162010570686f6e6568",
        "09016269",
        "16016201616a00fc00f15365",
        "1701610162070809395b7b224d736754797065223a2254494d54657874456c656d222c224d7367436f6e74656e74223a7b2254657874223a227175696574227d7d5d00003c006b000001fb100e03",
        "19fd00401e18240a0600",
    ];
    assert_eq!(ops.len(), bytes.len());
    for (op, want) in ops.into_iter().zip(bytes) {
        let mut buf = Vec::new();
        encode_op(&op, &mut buf);
        let hex: String = buf.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, want, "{op:?}");
        assert_eq!(decode_op(&buf, UserId::new).unwrap(), op);
    }
}
