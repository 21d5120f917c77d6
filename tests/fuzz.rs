//! Fuzzing what strangers send, replayed on every test run and run long on demand:
//!
//! - the WebSocket message handler (both protocols): random and protocol-shaped messages on a
//!   live connection, after which the server still answers a subscription;
//! - the filter compiler: random `where` values (columns, operators, logical keys, any value),
//!   compiled within the limits and evaluated on random rows;
//! - the pgoutput reader and the COPY text decoder: random bytes, and random mutations of valid
//!   input, in random chunks.
//!
//! Each target replays its seed corpus (`tests/fuzz/<target>/*`, inputs that once broke
//! something or stand for a family of attacks), then `VIEWCAST_FUZZ_CASES` generated cases
//! (256 by default). A long run:
//!
//! ```sh
//! VIEWCAST_FUZZ_CASES=200000 cargo test --release --test fuzz
//! ```
//!
//! A failure prints the smallest input proptest found; add it to the corpus with the fix.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Value, json};

fn cases() -> u32 {
    std::env::var("VIEWCAST_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// The seed corpus of `target`: every file under `tests/fuzz/<target>/`.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path).expect("seed");
            (path, bytes)
        })
        .collect()
}

// --- pgoutput -----------------------------------------------------------------------------

#[test]
fn pgoutput_reader_never_panics() {
    use viewcast::feed::postgres::pgoutput::decode;
    for (path, bytes) in corpus("pgoutput") {
        // The seeds are valid messages (so their mutations reach deep into the reader).
        assert!(decode(&bytes).is_ok(), "{}", path.display());
        // And every prefix and one-byte change of it.
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        for i in 0..bytes.len() {
            let mut changed = bytes.clone();
            changed[i] ^= 0xff;
            let _ = decode(&changed);
        }
        eprintln!("replayed {}", path.display());
    }
    let seeds: Vec<Vec<u8>> = corpus("pgoutput").into_iter().map(|(_, b)| b).collect();
    let strategy = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..512),
        // A seed with random bytes overwritten, inserted or cut.
        (
            proptest::sample::select(seeds),
            proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            any::<usize>(),
        )
            .prop_map(|(mut bytes, edits, cut)| {
                for (at, byte) in edits {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                }
                bytes.truncate(cut % (bytes.len() + 1));
                bytes
            }),
    ];
    runner()
        .run(&strategy, |bytes| {
            let _ = decode(&bytes);
            Ok(())
        })
        .expect("pgoutput");
}

// --- COPY text ----------------------------------------------------------------------------

fn decode_copy(chunks: &[&[u8]]) {
    use viewcast::feed::copytext::{CopyDecoder, CopyError};
    let mut decoder = CopyDecoder::new();
    for chunk in chunks {
        let result = decoder.feed(chunk, |fields| {
            for i in 0..=fields.len() {
                let _ = fields.get(i);
            }
            Ok::<(), CopyError>(())
        });
        if result.is_err() {
            return;
        }
    }
}

#[test]
fn copy_decoder_never_panics_whatever_the_chunks() {
    for (_, bytes) in corpus("copy") {
        decode_copy(&[&bytes]);
        for cut in 0..=bytes.len() {
            decode_copy(&[&bytes[..cut], &bytes[cut..]]);
        }
    }
    let strategy = (
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..512),
            // Text made of the characters that matter to the format.
            proptest::collection::vec(
                proptest::sample::select(b"\t\n\\N.abc\xc3\xa9\xff0r".to_vec()),
                0..512
            ),
        ],
        proptest::collection::vec(any::<usize>(), 0..8),
    );
    runner()
        .run(&strategy, |(bytes, cuts)| {
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut at = 0;
            for p in points {
                chunks.push(&bytes[at..p]);
                at = p;
            }
            chunks.push(&bytes[at..]);
            decode_copy(&chunks);
            Ok(())
        })
        .expect("copy");
}

// --- filters ------------------------------------------------------------------------------

const SCHEMA: &str = r"
backend: postgres
enums:
  side: [buy, sell]
sources:
  items:
    primary_key: id
    columns:
      id: Integer
      big: BigInt
      price: Float
      amount: Numeric
      name: String
      active: Boolean
      side: side
      at: Timestamp
";

fn source() -> Arc<viewcast::config::SourceDef> {
    viewcast::config::load_str(std::path::Path::new("fuzz.yaml"), SCHEMA)
        .expect("config")
        .sources[0]
        .clone()
}

/// Any JSON value, keys drawn mostly from what filters use.
fn filter_value() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        proptest::sample::select(vec![
            "id", "big", "price", "amount", "name", "active", "side", "at", "_and", "_or", "_not",
            "_eq", "_neq", "_gt", "_gte", "_lt", "_lte", "_in", "_nin", "_is_null", "_like",
            "_nlike", "_ilike", "_nilike", "_regex", "_nregex", "_iregex", "_niregex",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[-0-9.eE+a-z%_\\\\()*?\\[\\]{}|^$]{0,12}".prop_map(Value::from),
        proptest::sample::select(vec![
            "buy",
            "sell",
            "NaN",
            "1.50",
            "-0",
            "9223372036854775808"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::vec((key.clone(), inner), 0..5)
                .prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn row() -> impl Strategy<Value = viewcast::value::Row> {
    use viewcast::value::Value as V;
    (
        any::<i64>(),
        any::<i64>(),
        any::<f64>(),
        "[a-z%_]{0,8}",
        proptest::option::of(any::<bool>()),
        0..3u32,
    )
        .prop_map(|(id, big, price, name, active, side)| {
            viewcast::value::Row::new(vec![
                V::Int(id),
                V::Int(big),
                V::Float(price),
                V::Null,
                V::Text(name.into()),
                active.map_or(V::Null, V::Bool),
                V::Enum(side),
                V::Null,
            ])
        })
}

fn check_filter(source: &viewcast::config::SourceDef, json: &Value, rows: &[viewcast::value::Row]) {
    let value = async_graphql::Value::from_json(json.clone()).expect("JSON → GraphQL value");
    let limits = viewcast::filter::FilterLimits::default();
    if viewcast::filter::check_size(&value, &limits).is_err() {
        return;
    }
    if let Ok(filter) = viewcast::filter::compile(source, &value) {
        for row in rows {
            let _ = filter.evaluate(row);
        }
        let _ = filter.canonical();
    }
}

#[test]
fn filter_compiler_never_panics_and_compiled_filters_evaluate() {
    let source = source();
    for (path, bytes) in corpus("filter") {
        let json: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        check_filter(&source, &json, &[]);
    }
    runner()
        .run(
            &(filter_value(), proptest::collection::vec(row(), 0..4)),
            |(json, rows)| {
                check_filter(&source, &json, &rows);
                Ok(())
            },
        )
        .expect("filter");
}

// --- the WebSocket handler ----------------------------------------------------------------

/// A client message: protocol-shaped (known types, odd ids and payloads), or anything.
fn ws_message() -> impl Strategy<Value = String> {
    let kind = proptest::sample::select(vec![
        "connection_init",
        "subscribe",
        "start",
        "stop",
        "complete",
        "ping",
        "pong",
        "connection_terminate",
        "next",
        "",
    ]);
    let id = prop_oneof![
        Just(Value::Null),
        "[a-z0-9]{0,4}".prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
    ];
    let query = prop_oneof![
        Just("subscription { items { operation data { id } } }".to_owned()),
        Just("{ items(limit: 1) { id } }".to_owned()),
        "[{}()\\[\\]@$:a-z ]{0,40}",
        (1..3_000usize).prop_map(|n| format!(
            "{{ __typename @skip(if: {}true{}) }}",
            "[".repeat(n),
            "]".repeat(n)
        )),
    ];
    let payload = prop_oneof![
        Just(Value::Null),
        query.prop_map(|q| json!({ "query": q })),
        filter_value().prop_map(|w| json!({
            "query": "subscription($w: itemsExpression) { items(where: $w) { operation } }",
            "variables": { "w": w },
        })),
        filter_value(),
    ];
    prop_oneof![
        4 => (kind, id, payload).prop_map(|(kind, id, payload)| {
            json!({ "type": kind, "id": id, "payload": payload }).to_string()
        }),
        1 => ".{0,64}",
    ]
}

#[test]
fn the_websocket_handler_survives_any_messages() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let db = runtime.block_on(async {
        let db = common::TestDb::new().await;
        db.client()
            .await
            .batch_execute("CREATE TABLE items (id integer PRIMARY KEY, big bigint, price float8, amount numeric, name text, active boolean, side text, at timestamp)")
            .await
            .expect("table");
        db
    });
    let server = runtime.block_on(common::start_server(&db, SCHEMA));
    let addr = server.addr();
    let send_all = |messages: Vec<String>, protocol: &'static str| {
        runtime.block_on(async move {
            let mut ws = common::Ws::open(addr, protocol).await;
            for message in &messages {
                // A protocol violation closes the connection: what follows goes nowhere.
                if !ws.try_send_raw(message).await {
                    break;
                }
            }
        });
    };
    for (_, bytes) in corpus("ws") {
        let message = String::from_utf8_lossy(&bytes).into_owned();
        for protocol in ["graphql-transport-ws", "graphql-ws"] {
            send_all(
                vec![r#"{"type":"connection_init"}"#.to_owned(), message.clone()],
                protocol,
            );
        }
    }
    // Fewer cases than the pure targets: each opens a connection.
    let mut runner = TestRunner::new(Config {
        cases: cases().div_ceil(8),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(
            &(
                proptest::collection::vec(ws_message(), 1..12),
                any::<bool>(),
            ),
            |(messages, legacy)| {
                send_all(
                    messages,
                    if legacy {
                        "graphql-ws"
                    } else {
                        "graphql-transport-ws"
                    },
                );
                Ok(())
            },
        )
        .expect("ws");
    // Still serving: a subscription gets its snapshot end.
    runtime.block_on(async {
        let mut ws = common::Ws::connect(addr, "graphql-transport-ws").await;
        ws.subscribe(
            "ok",
            "subscription { items(snapshot_end: true) { operation } }",
        )
        .await;
        let end = ws.next_payload("ok").await;
        assert_eq!(end["data"]["items"]["operation"], "SNAPSHOT_END", "{end}");
    });
    runtime.block_on(async {
        server.shutdown().await;
        db.stop().await;
    });
}
