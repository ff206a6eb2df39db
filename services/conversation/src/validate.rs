//! Input checks with messages a client developer can act on. Pure.

use tonic::Status;
use uuid::Uuid;

/// Largest user turn accepted.
pub const MAX_CONTENT_BYTES: usize = 16 * 1024;
pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

pub fn conversation_id(raw: &str) -> Result<Uuid, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument("conversation_id is required"));
    }
    Uuid::parse_str(raw).map_err(|_| {
        Status::invalid_argument("conversation_id must be a UUID as returned by CreateConversation")
    })
}

/// A message id, in the field named `field` (`message_id`, …).
pub fn message_id(field: &str, raw: &str) -> Result<Uuid, Status> {
    if raw.is_empty() {
        return Err(Status::invalid_argument(format!("{field} is required")));
    }
    Uuid::parse_str(raw).map_err(|_| {
        Status::invalid_argument(format!(
            "{field} must be a message id (a UUID) as returned by SendMessage or ListMessages"
        ))
    })
}

/// An optional message id: empty means none.
pub fn optional_message_id(field: &str, raw: &str) -> Result<Option<Uuid>, Status> {
    if raw.is_empty() {
        return Ok(None);
    }
    message_id(field, raw).map(Some)
}

pub fn content(content: &str) -> Result<(), Status> {
    if content.trim().is_empty() {
        return Err(Status::invalid_argument("content must not be empty"));
    }
    if content.len() > MAX_CONTENT_BYTES {
        return Err(Status::invalid_argument(format!(
            "content is {} bytes; the limit is {MAX_CONTENT_BYTES} bytes (16 KiB)",
            content.len()
        )));
    }
    Ok(())
}

pub fn title(title: &str) -> Result<(), Status> {
    let chars = title.chars().count();
    if chars > MAX_TITLE_CHARS {
        return Err(Status::invalid_argument(format!(
            "title is {chars} characters; the limit is {MAX_TITLE_CHARS}"
        )));
    }
    Ok(())
}

/// An empty key means "no key".
pub fn idempotency_key(key: &str) -> Result<Option<&str>, Status> {
    if key.is_empty() {
        return Ok(None);
    }
    if key.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "idempotency_key must be at most {MAX_IDEMPOTENCY_KEY_CHARS} printable characters (a UUID works well)"
        )));
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn content_bounds() {
        assert_eq!(content("").unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(content(" \n\t").unwrap_err().code(), Code::InvalidArgument);
        assert!(content(&"a".repeat(MAX_CONTENT_BYTES)).is_ok());
        let err = content(&"a".repeat(MAX_CONTENT_BYTES + 1)).unwrap_err();
        assert!(err.message().contains("16 KiB"));
    }

    #[test]
    fn ids_and_keys() {
        assert_eq!(
            conversation_id("nope").unwrap_err().code(),
            Code::InvalidArgument
        );
        assert!(conversation_id(&Uuid::new_v4().to_string()).is_ok());
        assert_eq!(idempotency_key("").unwrap(), None);
        assert_eq!(idempotency_key("k-1").unwrap(), Some("k-1"));
        assert!(idempotency_key(&"k".repeat(129)).is_err());
        assert!(idempotency_key("a\nb").is_err());
        assert!(title(&"t".repeat(201)).is_err());
        let err = message_id("message_id", "").unwrap_err();
        assert_eq!(err.message(), "message_id is required");
        assert!(
            message_id("branch_id", "x")
                .unwrap_err()
                .message()
                .contains("branch_id")
        );
        assert_eq!(optional_message_id("parent_message_id", "").unwrap(), None);
        let id = Uuid::new_v4();
        assert_eq!(optional_message_id("p", &id.to_string()).unwrap(), Some(id));
    }
}
