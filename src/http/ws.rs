//! GraphQL over WebSocket: `graphql-transport-ws` (the graphql-ws library; Apollo's
//! `GraphQLWsLink`, urql, GraphiQL) and the legacy `graphql-ws` subprotocol
//! (subscriptions-transport-ws), implemented here rather than taken from async-graphql so that
//! close codes, the initialisation timeout, duplicate ids and keep-alives follow the protocols
//! (async-graphql closes with 1011/1002 where the spec says 4401/4400, replaces duplicate ids
//! silently, has no init timeout and never sends legacy `ka`).
//!
//! Each operation runs in its own task and writes into one bounded queue per connection; a
//! slow socket therefore stops polling the operation's stream, and the hub reader behind it
//! conflates instead of queueing.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Data;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::AppState;
use crate::hub::Reader;
use crate::schema::PlanSlot;

const MODERN: &str = "graphql-transport-ws";
const LEGACY: &str = "graphql-ws";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// `graphql-transport-ws`.
    Modern,
    /// `graphql-ws` (subscriptions-transport-ws).
    Legacy,
}

/// The `connection_init` payload, available to resolvers as session data.
#[derive(Debug, Clone)]
pub struct ConnectionParams(pub serde_json::Value);

pub(super) fn upgrade(upgrade: WebSocketUpgrade, state: AppState) -> Response {
    let upgrade = upgrade
        .protocols([MODERN, LEGACY])
        .max_message_size(state.ws.max_message_bytes);
    let protocol = match upgrade.selected_protocol().and_then(|v| v.to_str().ok()) {
        Some(LEGACY) => Protocol::Legacy,
        // graphql-transport-ws is the default for clients that name no subprotocol.
        _ => Protocol::Modern,
    };
    upgrade.on_upgrade(move |socket| run(socket, protocol, state))
}

#[derive(Deserialize)]
struct ClientMessage {
    #[serde(rename = "type")]
    kind: String,
    id: Option<String>,
    payload: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ServerMessage<'a, T: Serialize> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<T>,
}

fn text<T: Serialize>(kind: &'static str, id: Option<&str>, payload: Option<T>) -> Message {
    let json = serde_json::to_string(&ServerMessage { kind, id, payload })
        .unwrap_or_else(|_| r#"{"type":"error"}"#.to_owned());
    Message::Text(json.into())
}

fn close(code: u16, reason: &str) -> Message {
    // WebSocket close reasons are limited to 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

struct Operation {
    generation: u64,
    task: tokio::task::AbortHandle,
}

struct Connection {
    protocol: Protocol,
    state: AppState,
    out: mpsc::Sender<Message>,
    done_tx: mpsc::UnboundedSender<(String, u64)>,
    operations: HashMap<String, Operation>,
    generation: u64,
    init_received: bool,
    session: Arc<Data>,
}

/// What handling one client message asks the connection to do next.
enum Next {
    Continue,
    Close(u16, String),
}

async fn run(socket: WebSocket, protocol: Protocol, state: AppState) {
    state.metrics.connections.add(1);
    state.metrics.connections_total.inc();
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(64);
    let write_timeout = state.ws.write_timeout;
    let writer = tokio::spawn(async move {
        // Write whatever is queued, then flush once: one syscall for a burst, not per message.
        // A client that stops reading for `write_timeout` is dropped: its socket would
        // otherwise hold this connection's tasks for as long as TCP keeps it open.
        'write: while let Some(mut message) = out_rx.recv().await {
            loop {
                let closing = matches!(message, Message::Close(_));
                let fed = tokio::time::timeout(write_timeout, sink.feed(message)).await;
                if !matches!(fed, Ok(Ok(()))) || closing {
                    break 'write;
                }
                match out_rx.try_recv() {
                    Ok(next) => message = next,
                    Err(_) => break,
                }
            }
            if !matches!(
                tokio::time::timeout(write_timeout, sink.flush()).await,
                Ok(Ok(()))
            ) {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut conn = Connection {
        protocol,
        state: state.clone(),
        out,
        done_tx,
        operations: HashMap::new(),
        generation: 0,
        init_received: false,
        session: Arc::new(Data::default()),
    };
    let init_deadline = tokio::time::sleep(state.ws.init_timeout);
    tokio::pin!(init_deadline);
    let mut keepalive = tokio::time::interval(state.ws.keepalive);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    keepalive.reset();

    let close_with = loop {
        tokio::select! {
            // Finished operations first, so a client reusing an id right after `complete`
            // is never taken for a duplicate.
            biased;
            Some((id, generation)) = done_rx.recv() => {
                if conn.operations.get(&id).is_some_and(|op| op.generation == generation) {
                    conn.operations.remove(&id);
                }
            }
            () = state.shutdown.cancelled() => break Some((1001, "server shutting down".to_owned())),
            () = &mut init_deadline, if !conn.init_received => {
                state.metrics.protocol_errors.inc();
                break Some((4408, "Connection initialisation timeout".to_owned()));
            }
            _ = keepalive.tick(), if conn.init_received => {
                let message = match conn.protocol {
                    Protocol::Modern => text::<()>("ping", None, None),
                    Protocol::Legacy => text::<()>("ka", None, None),
                };
                if conn.out.send(message).await.is_err() {
                    break None;
                }
            }
            message = stream.next() => {
                let next = match message {
                    Some(Ok(Message::Text(body))) => conn.handle(body.as_str()).await,
                    Some(Ok(Message::Binary(_))) => Next::Close(4400, "Binary messages are not supported".into()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => Next::Continue,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break None,
                };
                if let Next::Close(code, reason) = next {
                    if (4400..4500).contains(&code) {
                        state.metrics.protocol_errors.inc();
                    }
                    break Some((code, reason));
                }
            }
        }
    };
    for (_, op) in conn.operations.drain() {
        op.task.abort();
    }
    if let Some((code, reason)) = close_with {
        let _ = conn.out.send(close(code, &reason)).await;
    }
    drop(conn);
    let _ = writer.await;
    state.metrics.connections.add(-1);
}

impl Connection {
    async fn handle(&mut self, body: &str) -> Next {
        let message: ClientMessage = match serde_json::from_str(body) {
            Ok(message) => message,
            Err(err) => {
                return match self.protocol {
                    Protocol::Modern => {
                        Next::Close(4400, format!("Invalid message received: {err}"))
                    }
                    Protocol::Legacy => {
                        self.send(text(
                            "connection_error",
                            None,
                            Some(
                                serde_json::json!({ "message": format!("invalid message: {err}") }),
                            ),
                        ))
                        .await;
                        Next::Continue
                    }
                };
            }
        };
        match self.protocol {
            Protocol::Modern => self.handle_modern(message).await,
            Protocol::Legacy => self.handle_legacy(message).await,
        }
    }

    async fn handle_modern(&mut self, message: ClientMessage) -> Next {
        match message.kind.as_str() {
            "connection_init" => {
                if self.init_received {
                    return Next::Close(4429, "Too many initialisation requests".into());
                }
                self.accept_init(message.payload);
                self.send(text::<()>("connection_ack", None, None)).await;
                Next::Continue
            }
            "ping" => {
                self.send(text("pong", None, message.payload)).await;
                Next::Continue
            }
            "pong" => Next::Continue,
            "subscribe" => {
                if !self.init_received {
                    return Next::Close(4401, "Unauthorized".into());
                }
                let Some(id) = message.id.filter(|id| !id.is_empty()) else {
                    return Next::Close(
                        4400,
                        "Invalid message received: subscribe needs an id".into(),
                    );
                };
                if self.operations.contains_key(&id) {
                    return Next::Close(4409, format!("Subscriber for {id} already exists"));
                }
                match parse_request(message.payload) {
                    Ok(request) => self.start(id, request).await,
                    Err(reason) => {
                        return Next::Close(4400, format!("Invalid message received: {reason}"));
                    }
                }
                Next::Continue
            }
            "complete" => {
                if let Some(op) = message.id.and_then(|id| self.operations.remove(&id)) {
                    op.task.abort();
                }
                Next::Continue
            }
            other => Next::Close(
                4400,
                format!("Invalid message received: unknown type {other:?}"),
            ),
        }
    }

    async fn handle_legacy(&mut self, message: ClientMessage) -> Next {
        match message.kind.as_str() {
            "connection_init" => {
                if !self.init_received {
                    self.accept_init(message.payload);
                }
                self.send(text::<()>("connection_ack", None, None)).await;
                self.send(text::<()>("ka", None, None)).await;
                Next::Continue
            }
            "start" => {
                let id = message.id.unwrap_or_default();
                if !self.init_received {
                    self.send_error(&id, "send connection_init before start")
                        .await;
                    return Next::Continue;
                }
                // subscriptions-transport-ws replaces an operation whose id is reused.
                if let Some(op) = self.operations.remove(&id) {
                    op.task.abort();
                }
                match parse_request(message.payload) {
                    Ok(request) => self.start(id, request).await,
                    Err(reason) => self.send_error(&id, &reason).await,
                }
                Next::Continue
            }
            "stop" => {
                // Only a running operation is completed: one that already ended sent its own
                // `complete` or `error`.
                if let Some((id, op)) = message
                    .id
                    .and_then(|id| self.operations.remove(&id).map(|op| (id, op)))
                {
                    op.task.abort();
                    self.send(text::<()>("complete", Some(&id), None)).await;
                }
                Next::Continue
            }
            "connection_terminate" => Next::Close(1000, "Normal Closure".into()),
            other => {
                let id = message.id.unwrap_or_default();
                self.send_error(&id, &format!("unknown message type {other:?}"))
                    .await;
                Next::Continue
            }
        }
    }

    fn accept_init(&mut self, payload: Option<serde_json::Value>) {
        self.init_received = true;
        let mut data = Data::default();
        data.insert(ConnectionParams(payload.unwrap_or(serde_json::Value::Null)));
        self.session = Arc::new(data);
    }

    async fn send(&self, message: Message) {
        let _ = self.out.send(message).await;
    }

    async fn send_error(&self, id: &str, message: &str) {
        let payload = serde_json::json!([{ "message": message }]);
        self.send(text("error", Some(id), Some(payload))).await;
    }

    /// Runs one operation in its own task.
    async fn start(&mut self, id: String, mut request: async_graphql::Request) {
        if self.operations.len() >= self.state.ws.max_operations {
            let limit = self.state.ws.max_operations;
            self.send_error(
                &id,
                &format!(
                    "too many operations on this connection (limit {limit}); complete some first"
                ),
            )
            .await;
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        // Subscriptions without directives run on the fast path: the executor validates them
        // and records a plan instead of streaming (see schema::encode).
        let slot = PlanSlot::default();
        if !request.query.contains('@') {
            request = request.data(slot.clone());
        }
        let responses = self
            .state
            .schema
            .execute_stream_with_session_data(request, self.session.clone());
        let out = self.out.clone();
        let done = self.done_tx.clone();
        let data_kind = if self.protocol == Protocol::Modern {
            "next"
        } else {
            "data"
        };
        let op_id = id.clone();
        let task = tokio::spawn(async move {
            if run_operation(&op_id, data_kind, responses, &slot, &out).await {
                let _ = out.send(text::<()>("complete", Some(&op_id), None)).await;
            }
            let _ = done.send((op_id, generation));
        });
        self.operations.insert(
            id,
            Operation {
                generation,
                task: task.abort_handle(),
            },
        );
    }
}

/// Sends an operation's results; `false` if it ended with an `error` message or the
/// connection is gone (so no `complete` follows).
async fn run_operation(
    id: &str,
    data_kind: &'static str,
    mut responses: futures::stream::BoxStream<'static, async_graphql::Response>,
    slot: &PlanSlot,
    out: &mpsc::Sender<Message>,
) -> bool {
    let mut first = true;
    while let Some(response) = responses.next().await {
        // Errors before any result (parse, validation, a rejected argument) end the operation
        // with an `error` message, as both protocols specify.
        if first && response.is_err() && response.data == async_graphql::Value::Null {
            let _ = out
                .send(text("error", Some(id), Some(&response.errors)))
                .await;
            return false;
        }
        first = false;
        if out
            .send(text(data_kind, Some(id), Some(&response)))
            .await
            .is_err()
        {
            return false;
        }
    }
    drop(responses);
    let Some(plan) = slot.take() else {
        return true;
    };
    let root = plan.hub.source().name.clone();
    let mut reader = match Reader::open_encoded(
        plan.hub,
        plan.filter,
        plan.encoder,
        plan.after,
        plan.snapshot_end,
    )
    .await
    {
        Ok(reader) => reader,
        Err(err) => {
            let errors = serde_json::json!([{ "message": err.to_string(), "path": [root], "extensions": { "code": "SOURCE_UNAVAILABLE" } }]);
            let _ = out.send(text("error", Some(id), Some(errors))).await;
            return false;
        }
    };
    let prefix = format!(
        "{{\"id\":{},\"type\":\"{data_kind}\",\"payload\":",
        serde_json::to_string(id).unwrap_or_default()
    );
    loop {
        match reader.next().await {
            Ok(body) => {
                let mut message = String::with_capacity(prefix.len() + body.len() + 1);
                message.push_str(&prefix);
                message.push_str(&body);
                message.push('}');
                if out.send(Message::Text(message.into())).await.is_err() {
                    return false;
                }
            }
            Err(err) => {
                let payload = serde_json::json!({
                    "data": null,
                    "errors": [{ "message": err.to_string(), "path": [root], "extensions": { "code": "SUBSCRIPTION_ENDED" } }],
                });
                return out
                    .send(text(data_kind, Some(id), Some(payload)))
                    .await
                    .is_ok();
            }
        }
    }
}

fn parse_request(payload: Option<serde_json::Value>) -> Result<async_graphql::Request, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Payload {
        query: String,
        operation_name: Option<String>,
        variables: Option<serde_json::Value>,
        extensions: Option<serde_json::Map<String, serde_json::Value>>,
    }
    let payload: Payload = serde_json::from_value(payload.ok_or("missing payload")?)
        .map_err(|e| format!("bad payload: {e}"))?;
    let mut request = async_graphql::Request::new(payload.query);
    if let Some(name) = payload.operation_name {
        request = request.operation_name(name);
    }
    if let Some(variables) = payload.variables.filter(|v| !v.is_null()) {
        request = request.variables(async_graphql::Variables::from_json(variables));
    }
    if let Some(extensions) = payload.extensions {
        for (key, value) in extensions {
            if let Ok(value) = async_graphql::Value::from_json(value) {
                request.extensions.insert(key, value);
            }
        }
    }
    Ok(request)
}
