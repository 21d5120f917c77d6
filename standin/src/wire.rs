//! PostgreSQL frontend/backend protocol (version 3) as far as the stand-in speaks it: start-up,
//! simple and extended query, COPY out, errors and cancel requests.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::types::SqlType;

/// What a client sends first.
pub enum Startup {
    Session { params: Vec<(String, String)> },
    Cancel { pid: i32, secret: i32 },
    Ssl,
}

const SSL_REQUEST: i32 = 80_877_103;
const CANCEL_REQUEST: i32 = 80_877_102;
const GSS_REQUEST: i32 = 80_877_104;

pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Startup> {
    let len = r.read_i32().await?;
    if !(8..=10_000).contains(&len) {
        return Err(invalid("bad start-up packet length"));
    }
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await?;
    let mut body = Bytes::from(body);
    let code = body.get_i32();
    match code {
        SSL_REQUEST | GSS_REQUEST => Ok(Startup::Ssl),
        CANCEL_REQUEST => Ok(Startup::Cancel {
            pid: body.get_i32(),
            secret: body.get_i32(),
        }),
        196_608 => {
            let mut params = Vec::new();
            loop {
                let key = cstr(&mut body)?;
                if key.is_empty() {
                    break;
                }
                params.push((key, cstr(&mut body)?));
            }
            Ok(Startup::Session { params })
        }
        other => Err(invalid(&format!("unsupported protocol {other}"))),
    }
}

/// A frontend message after start-up.
pub enum Frontend {
    Query(String),
    Parse {
        name: String,
        sql: String,
        types: Vec<u32>,
    },
    Bind {
        portal: String,
        statement: String,
        param_formats: Vec<i16>,
        params: Vec<Option<Bytes>>,
        result_formats: Vec<i16>,
    },
    Describe {
        kind: u8,
        name: String,
    },
    Execute {
        portal: String,
    },
    Close {
        kind: u8,
        name: String,
    },
    Sync,
    Flush,
    Terminate,
    /// Messages the stand-in ignores (CopyData/CopyDone/CopyFail from a client, …).
    Other,
}

pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frontend> {
    let tag = r.read_u8().await?;
    let len = r.read_i32().await?;
    if !(4..=64 * 1024 * 1024).contains(&len) {
        return Err(invalid("bad message length"));
    }
    let mut body = vec![0; len as usize - 4];
    r.read_exact(&mut body).await?;
    let mut b = Bytes::from(body);
    Ok(match tag {
        b'Q' => Frontend::Query(cstr(&mut b)?),
        b'P' => {
            let name = cstr(&mut b)?;
            let sql = cstr(&mut b)?;
            let n = b.get_i16();
            let types = (0..n).map(|_| b.get_u32()).collect();
            Frontend::Parse { name, sql, types }
        }
        b'B' => {
            let portal = cstr(&mut b)?;
            let statement = cstr(&mut b)?;
            let nf = b.get_i16();
            let param_formats = (0..nf).map(|_| b.get_i16()).collect();
            let np = b.get_i16();
            let mut params = Vec::with_capacity(np as usize);
            for _ in 0..np {
                let len = b.get_i32();
                if len < 0 {
                    params.push(None);
                } else {
                    params.push(Some(b.split_to(len as usize)));
                }
            }
            let nr = b.get_i16();
            let result_formats = (0..nr).map(|_| b.get_i16()).collect();
            Frontend::Bind {
                portal,
                statement,
                param_formats,
                params,
                result_formats,
            }
        }
        b'D' => Frontend::Describe {
            kind: b.get_u8(),
            name: cstr(&mut b)?,
        },
        b'E' => Frontend::Execute {
            portal: cstr(&mut b)?,
        },
        b'C' => Frontend::Close {
            kind: b.get_u8(),
            name: cstr(&mut b)?,
        },
        b'S' => Frontend::Sync,
        b'H' => Frontend::Flush,
        b'X' => Frontend::Terminate,
        _ => Frontend::Other,
    })
}

fn cstr(b: &mut Bytes) -> std::io::Result<String> {
    let end = b
        .iter()
        .position(|&c| c == 0)
        .ok_or_else(|| invalid("unterminated string"))?;
    let s = String::from_utf8(b.split_to(end).to_vec()).map_err(|_| invalid("invalid UTF-8"))?;
    b.advance(1);
    Ok(s)
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// Backend messages, buffered until flushed.
#[derive(Default)]
pub struct Out {
    pub buf: BytesMut,
}

impl Out {
    fn message(&mut self, tag: u8, body: impl FnOnce(&mut BytesMut)) {
        self.buf.put_u8(tag);
        let at = self.buf.len();
        self.buf.put_i32(0);
        body(&mut self.buf);
        let len = (self.buf.len() - at) as i32;
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn auth_ok(&mut self) {
        self.message(b'R', |b| b.put_i32(0));
    }

    pub fn parameter_status(&mut self, key: &str, value: &str) {
        self.message(b'S', |b| {
            put_cstr(b, key);
            put_cstr(b, value);
        });
    }

    pub fn backend_key(&mut self, pid: i32, secret: i32) {
        self.message(b'K', |b| {
            b.put_i32(pid);
            b.put_i32(secret);
        });
    }

    /// `status`: `I` idle, `T` in a transaction, `E` in a failed transaction.
    pub fn ready(&mut self, status: u8) {
        self.message(b'Z', |b| b.put_u8(status));
    }

    pub fn row_description(&mut self, columns: &[(String, SqlType)], formats: &[i16]) {
        self.message(b'T', |b| {
            b.put_i16(columns.len() as i16);
            for (i, (name, ty)) in columns.iter().enumerate() {
                put_cstr(b, name);
                b.put_i32(0);
                b.put_i16(0);
                b.put_u32(ty.oid());
                b.put_i16(ty.size());
                b.put_i32(-1);
                b.put_i16(format_of(formats, i));
            }
        });
    }

    pub fn no_data(&mut self) {
        self.message(b'n', |_| {});
    }

    pub fn parameter_description(&mut self, types: &[SqlType]) {
        self.message(b't', |b| {
            b.put_i16(types.len() as i16);
            for ty in types {
                b.put_u32(ty.oid());
            }
        });
    }

    /// One row; `values` are already in their wire format.
    pub fn data_row(&mut self, values: &[Option<Vec<u8>>]) {
        self.message(b'D', |b| {
            b.put_i16(values.len() as i16);
            for value in values {
                match value {
                    Some(v) => {
                        b.put_i32(v.len() as i32);
                        b.put_slice(v);
                    }
                    None => b.put_i32(-1),
                }
            }
        });
    }

    pub fn command_complete(&mut self, tag: &str) {
        self.message(b'C', |b| put_cstr(b, tag));
    }

    pub fn empty_query(&mut self) {
        self.message(b'I', |_| {});
    }

    pub fn parse_complete(&mut self) {
        self.message(b'1', |_| {});
    }

    pub fn bind_complete(&mut self) {
        self.message(b'2', |_| {});
    }

    pub fn close_complete(&mut self) {
        self.message(b'3', |_| {});
    }

    pub fn copy_out_response(&mut self, columns: usize) {
        self.message(b'H', |b| {
            b.put_u8(0);
            b.put_i16(columns as i16);
            for _ in 0..columns {
                b.put_i16(0);
            }
        });
    }

    pub fn copy_done(&mut self) {
        self.message(b'c', |_| {});
    }

    pub fn copy_data(&mut self, data: &[u8]) {
        self.message(b'd', |b| b.put_slice(data));
    }

    pub fn error(&mut self, code: &str, message: &str) {
        self.message(b'E', |b| {
            for (field, value) in [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', code),
                (b'M', message),
            ] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            b.put_u8(0);
        });
    }

    pub fn notice(&mut self, message: &str) {
        self.message(b'N', |b| {
            for (field, value) in [
                (b'S', "NOTICE"),
                (b'V', "NOTICE"),
                (b'C', "00000"),
                (b'M', message),
            ] {
                b.put_u8(field);
                put_cstr(b, value);
            }
            b.put_u8(0);
        });
    }

    pub async fn flush<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            w.write_all(&self.buf).await?;
            self.buf.clear();
        }
        w.flush().await
    }
}

fn format_of(formats: &[i16], i: usize) -> i16 {
    match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    }
}

/// The result format of column `i` given a Bind's result format codes.
pub fn result_format(formats: &[i16], i: usize) -> i16 {
    format_of(formats, i)
}

fn put_cstr(b: &mut BytesMut, s: &str) {
    b.put_slice(s.as_bytes());
    b.put_u8(0);
}
