//! Server-sent events, as both providers stream them. Pure: bytes in,
//! events out, in any chunking.

/// One event: its `event:` name (if any) and its `data:` lines joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Accumulates bytes and yields complete events (blank-line terminated).
#[derive(Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    events.push(SseEvent {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                continue;
            }
            if line.starts_with(':') {
                continue; // comment / keep-alive
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "event" => self.event = Some(value.to_owned()),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_any_chunking() {
        let stream = b"event: ping\ndata: {\"a\":1}\n\n: keep-alive\r\ndata: line one\r\ndata: line two\r\n\r\ndata: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream[..split]);
            events.extend(parser.push(&stream[split..]));
            assert_eq!(
                events,
                vec![
                    SseEvent {
                        event: Some("ping".into()),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: None,
                        data: "line one\nline two".into()
                    },
                    SseEvent {
                        event: None,
                        data: "[DONE]".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn an_unterminated_event_is_held_back() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"data: partial").is_empty());
        assert_eq!(parser.push(b"\n\n").len(), 1);
    }
}
