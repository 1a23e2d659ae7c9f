//! The client cache: the most recent messages one device holds, bounded by a capacity. Entries
//! point at the shared message record, so a recall turns them into tombstones in place.

use std::collections::VecDeque;

use crate::message::{MessageView, MsgArc};

pub(crate) struct DeviceCache {
    capacity: usize,
    entries: VecDeque<MsgArc>,
}

impl DeviceCache {
    pub fn new(capacity: usize) -> Self {
        DeviceCache {
            capacity,
            entries: VecDeque::new(),
        }
    }

    /// Adds a message the device now holds, evicting the oldest beyond capacity.
    pub fn push(&mut self, msg: MsgArc) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(msg);
    }

    /// What the device holds, oldest first; recalled messages come back as tombstones.
    pub fn views(&self) -> Vec<MessageView> {
        self.entries.iter().map(|m| m.view()).collect()
    }
}
