//! Browsers' way in, on the gateway's gRPC port: the chat page's files, the
//! public API over gRPC-Web on HTTP/1.1 (a streamed reply, errors as gRPC
//! statuses, the exchange stored), and CORS for the allowed origin only.
//! The page itself is driven in Chromium by tests/python/test_web_chat.py.

use prost::Message as _;
use tp_e2e::tp_proto::v1 as pb;
use tp_e2e::{TestApp, WEB_TEST_ORIGIN};

const GRPC_WEB: &str = "application/grpc-web+proto";

fn http1() -> anyhow::Result<reqwest::Client> {
    // reqwest wants a crypto provider even for plain HTTP; a second install
    // is a no-op.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().http1_only().build()?)
}

fn frame(message: &impl prost::Message) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

/// A gRPC-Web response body: its messages, and its trailers frame as text.
fn frames(body: &[u8]) -> anyhow::Result<(Vec<Vec<u8>>, String)> {
    let (mut messages, mut trailers, mut rest) = (Vec::new(), String::new(), body);
    while !rest.is_empty() {
        anyhow::ensure!(rest.len() >= 5, "a truncated frame header");
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        anyhow::ensure!(rest.len() >= 5 + len, "a truncated frame");
        let payload = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            trailers = String::from_utf8(payload.to_vec())?;
        } else {
            messages.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    Ok((messages, trailers))
}

async fn grpc_web_call(
    client: &reqwest::Client,
    app: &TestApp,
    method: &str,
    token: &str,
    request: &impl prost::Message,
) -> anyhow::Result<reqwest::Response> {
    Ok(client
        .post(format!(
            "http://{}/thoughtpartner.v1.ConversationService/{method}",
            app.gateway_addr
        ))
        .header("content-type", GRPC_WEB)
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {token}"))
        .body(frame(request))
        .send()
        .await?)
}

#[tokio::test]
async fn the_chat_page_is_served_on_the_grpc_port_with_a_strict_policy() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let client = http1()?;
    let page = client
        .get(format!("http://{}/chat", app.gateway_addr))
        .send()
        .await?;
    assert_eq!(page.status(), 200);
    assert_eq!(page.version(), reqwest::Version::HTTP_11);
    let policy = page.headers()["content-security-policy"]
        .to_str()?
        .to_owned();
    assert!(policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await?;
    assert!(html.contains("<script src=\"/chat.js\">"));
    let script = client
        .get(format!("http://{}/chat.js", app.gateway_addr))
        .send()
        .await?;
    assert_eq!(script.status(), 200);
    assert!(script.text().await?.contains("application/grpc-web+proto"));
    // Anything else over HTTP/1.1 that is not gRPC-Web is refused.
    let other = client
        .get(format!("http://{}/admin", app.gateway_addr))
        .send()
        .await?;
    assert_eq!(other.status(), 400);
    Ok(())
}

#[tokio::test]
async fn a_reply_streams_over_grpc_web_on_http1_and_is_stored() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let (_tenant, alice) = app.tenant_with_member("Web tenant", "alice").await?;
    let client = http1()?;

    let created = grpc_web_call(
        &client,
        &app,
        "CreateConversation",
        &alice,
        &pb::CreateConversationRequest {
            title: "From a browser".into(),
        },
    )
    .await?;
    assert_eq!(created.headers()["content-type"], GRPC_WEB);
    let (messages, trailers) = frames(&created.bytes().await?)?;
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let conversation = pb::CreateConversationResponse::decode(messages[0].as_slice())?
        .conversation
        .ok_or_else(|| anyhow::anyhow!("no conversation"))?;

    let content = "Two of my teams keep blocking each other's releases.";
    let mut reply = grpc_web_call(
        &client,
        &app,
        "SendMessage",
        &alice,
        &pb::SendMessageRequest {
            conversation_id: conversation.conversation_id.clone(),
            content: content.into(),
            idempotency_key: "web-1".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(reply.version(), reqwest::Version::HTTP_11);
    // Read it as a browser's fetch does: chunk by chunk as it arrives.
    let (mut body, mut chunks) = (Vec::new(), 0);
    while let Some(chunk) = reply.chunk().await? {
        body.extend_from_slice(&chunk);
        chunks += 1;
    }
    let (messages, trailers) = frames(&body)?;
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    assert!(
        chunks >= 2,
        "the reply arrived in one piece ({chunks} chunk)"
    );
    let events: Vec<pb::SendMessageResponse> = messages
        .iter()
        .map(|m| pb::SendMessageResponse::decode(m.as_slice()))
        .collect::<Result<_, _>>()?;
    let streamed: String = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::send_message_response::Event::TextDelta(d)) => Some(d.text.as_str()),
            _ => None,
        })
        .collect();
    let Some(pb::send_message_response::Event::Completed(completed)) =
        events.last().and_then(|e| e.event.clone())
    else {
        anyhow::bail!("the stream did not end with `completed`");
    };
    let stored = completed
        .assistant_message
        .ok_or_else(|| anyhow::anyhow!("no assistant message"))?;
    assert_eq!(stored.content, streamed);
    assert!(streamed.contains('?'), "the coach asks: {streamed}");

    // The same exchange, read back over plain gRPC.
    let transcript = tp_e2e::transcript(
        &mut app.conversations(&alice).await?,
        &conversation.conversation_id,
    )
    .await?;
    let contents: Vec<&str> = transcript.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(contents, [content, streamed.as_str()]);
    Ok(())
}

#[tokio::test]
async fn grpc_web_errors_are_grpc_statuses() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let client = http1()?;
    let refused = grpc_web_call(
        &client,
        &app,
        "CreateConversation",
        "not-a-token",
        &pb::CreateConversationRequest::default(),
    )
    .await?;
    // Trailers-only: the status rides in the HTTP headers, as in gRPC.
    assert_eq!(refused.status(), 200);
    assert_eq!(refused.headers()["grpc-status"], "16");
    let message = refused.headers()["grpc-message"].to_str()?.to_owned();
    assert!(!message.is_empty());
    Ok(())
}

#[tokio::test]
async fn only_the_allowed_origin_may_call_from_a_browser() -> anyhow::Result<()> {
    let app = TestApp::spawn().await?;
    let client = http1()?;
    let preflight = |origin: &'static str| {
        client
            .request(
                reqwest::Method::OPTIONS,
                format!(
                    "http://{}/thoughtpartner.v1.ConversationService/SendMessage",
                    app.gateway_addr
                ),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web",
            )
            .send()
    };
    let allowed = preflight(WEB_TEST_ORIGIN).await?;
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        WEB_TEST_ORIGIN
    );
    let headers = allowed.headers()["access-control-allow-headers"]
        .to_str()?
        .to_ascii_lowercase();
    assert!(headers.contains("authorization") && headers.contains("x-grpc-web"));

    let other = preflight("https://evil.example").await?;
    assert!(
        other.headers().get("access-control-allow-origin").is_none(),
        "another origin was allowed: {:?}",
        other.headers()
    );

    // A real call from the allowed origin can read the status it gets.
    let call = client
        .post(format!(
            "http://{}/thoughtpartner.v1.ConversationService/CreateConversation",
            app.gateway_addr
        ))
        .header("origin", WEB_TEST_ORIGIN)
        .header("content-type", GRPC_WEB)
        .body(frame(&pb::CreateConversationRequest::default()))
        .send()
        .await?;
    assert_eq!(
        call.headers()["access-control-allow-origin"],
        WEB_TEST_ORIGIN
    );
    let exposed = call.headers()["access-control-expose-headers"]
        .to_str()?
        .to_ascii_lowercase();
    assert!(exposed.contains("grpc-status") && exposed.contains("grpc-message"));
    assert_eq!(call.headers()["grpc-status"], "16");
    Ok(())
}
