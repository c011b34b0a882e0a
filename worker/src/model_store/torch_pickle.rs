//! Reading `torch.save` archives: a zip file (entries stored, not
//! compressed) holding `data.pkl` and one file per storage.
//! Shared by the engines whose published weights are `torch.save` files
//! (taming's VQGAN checkpoints, min-dalle's state dicts).

use anyhow::Context;
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

/// The tensors of the checkpoint's `state_dict` (or of the top-level
/// dictionary when the file is a bare state dict).
pub fn read_state_dict(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path)?;
    anyhow::ensure!(
        bytes.starts_with(b"PK"),
        "not a zip archive: checkpoints saved before torch 1.6 must be re-saved with torch.save"
    );
    let entries = zip_entries(&bytes)?;
    let (prefix, pkl) = entries
        .iter()
        .find_map(|(name, range)| {
            name.strip_suffix("data.pkl")
                .map(|p| (p.to_string(), &bytes[range.clone()]))
        })
        .context("the archive has no data.pkl")?;
    let root = Unpickler::new(pkl).run()?;
    let dict = match root.dict_get("state_dict") {
        Some(sd) => sd,
        None => &root,
    };
    let Value::Dict(items) = dict else {
        anyhow::bail!("the checkpoint's state_dict is not a dictionary");
    };
    let mut out = HashMap::new();
    for (k, v) in items {
        let (Value::Str(name), Value::Tensor(t)) = (k, v) else {
            continue;
        };
        let file = format!("{prefix}data/{}", t.storage.key);
        let range = entries
            .get(&file)
            .with_context(|| format!("the archive has no {file}"))?;
        let tensor = t
            .materialise(&bytes[range.clone()])
            .with_context(|| format!("tensor {name}"))?;
        out.insert(name.clone(), tensor);
    }
    Ok(out)
}

fn u16_at(b: &[u8], i: usize) -> anyhow::Result<u64> {
    let s = b.get(i..i + 2).context("truncated zip archive")?;
    Ok(u16::from_le_bytes([s[0], s[1]]) as u64)
}

fn u32_at(b: &[u8], i: usize) -> anyhow::Result<u64> {
    let s = b.get(i..i + 4).context("truncated zip archive")?;
    Ok(u32::from_le_bytes(s.try_into()?) as u64)
}

fn u64_at(b: &[u8], i: usize) -> anyhow::Result<u64> {
    let s = b.get(i..i + 8).context("truncated zip archive")?;
    Ok(u64::from_le_bytes(s.try_into()?))
}

/// Name → byte range of each stored entry, from the central directory
/// (zip64 sizes and offsets included).
fn zip_entries(b: &[u8]) -> anyhow::Result<HashMap<String, std::ops::Range<usize>>> {
    let eocd = (0..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..].starts_with(&[0x50, 0x4b, 0x05, 0x06]))
        .context("no end of central directory: not a zip archive")?;
    let mut count = u16_at(b, eocd + 10)?;
    let mut cd = u32_at(b, eocd + 16)?;
    if count == 0xffff || cd == 0xffff_ffff {
        // The zip64 end of central directory locator precedes the record.
        let loc = eocd.checked_sub(20).context("truncated zip64 archive")?;
        anyhow::ensure!(
            b[loc..].starts_with(&[0x50, 0x4b, 0x06, 0x07]),
            "bad zip64 locator"
        );
        let rec = u64_at(b, loc + 8)? as usize;
        anyhow::ensure!(
            b[rec..].starts_with(&[0x50, 0x4b, 0x06, 0x06]),
            "bad zip64 record"
        );
        count = u64_at(b, rec + 32)?;
        cd = u64_at(b, rec + 48)?;
    }
    let mut out = HashMap::new();
    let mut p = cd as usize;
    for _ in 0..count {
        anyhow::ensure!(
            b[p..].starts_with(&[0x50, 0x4b, 0x01, 0x02]),
            "bad central directory"
        );
        let method = u16_at(b, p + 10)?;
        let mut size = u32_at(b, p + 20)?;
        let mut usize_ = u32_at(b, p + 24)?;
        let name_len = u16_at(b, p + 28)? as usize;
        let extra_len = u16_at(b, p + 30)? as usize;
        let comment_len = u16_at(b, p + 32)? as usize;
        let mut offset = u32_at(b, p + 42)?;
        let name = String::from_utf8_lossy(&b[p + 46..p + 46 + name_len]).into_owned();
        // zip64 extended information: the fields that overflowed, in order.
        let mut e = p + 46 + name_len;
        let extra_end = e + extra_len;
        while e + 4 <= extra_end {
            let id = u16_at(b, e)?;
            let len = u16_at(b, e + 2)? as usize;
            if id == 1 {
                let mut f = e + 4;
                for field in [&mut usize_, &mut size, &mut offset] {
                    if *field == 0xffff_ffff {
                        *field = u64_at(b, f)?;
                        f += 8;
                    }
                }
            }
            e += 4 + len;
        }
        anyhow::ensure!(
            method == 0 && size == usize_,
            "{name} is compressed (method {method}); torch.save stores entries uncompressed"
        );
        let lh = offset as usize;
        anyhow::ensure!(
            b[lh..].starts_with(&[0x50, 0x4b, 0x03, 0x04]),
            "bad local header"
        );
        let start = lh + 30 + u16_at(b, lh + 26)? as usize + u16_at(b, lh + 28)? as usize;
        let end = start + size as usize;
        anyhow::ensure!(end <= b.len(), "{name} runs past the end of the archive");
        out.insert(name, start..end);
        p += 46 + name_len + extra_len + comment_len;
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct Storage {
    key: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
pub struct TensorRef {
    storage: Storage,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    fn materialise(&self, data: &[u8]) -> anyhow::Result<Tensor> {
        let elem = self.storage.kind.elt_size_in_bytes();
        let numel = (data.len() / elem) as i64;
        let last = self.offset
            + self
                .size
                .iter()
                .zip(&self.stride)
                .map(|(n, s)| (n - 1).max(0) * s)
                .sum::<i64>();
        anyhow::ensure!(
            self.size.contains(&0) || last < numel,
            "its view runs past its storage of {numel} elements"
        );
        let flat = Tensor::f_from_data_size(data, &[numel], self.storage.kind)?;
        Ok(flat
            .f_as_strided(self.size.as_slice(), self.stride.as_slice(), self.offset)?
            .contiguous())
    }
}

#[derive(Debug, Clone)]
pub enum Value {
    None,
    Int(i64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(String, String),
    Storage(Storage),
    Tensor(TensorRef),
    /// Anything else a checkpoint may hold (floats, bytes, booleans,
    /// optimizer state, callbacks): read past, not kept.
    Object,
    Mark,
}

impl Value {
    fn dict_get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find_map(|(k, v)| match k {
                Value::Str(s) if s == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    fn int(&self) -> anyhow::Result<i64> {
        match self {
            Value::Int(i) => Ok(*i),
            other => anyhow::bail!("expected an integer, found {other:?}"),
        }
    }

    fn ints(&self) -> anyhow::Result<Vec<i64>> {
        match self {
            Value::Tuple(v) | Value::List(v) => v.iter().map(Value::int).collect(),
            other => anyhow::bail!("expected a tuple of integers, found {other:?}"),
        }
    }
}

fn storage_kind(name: &str) -> anyhow::Result<Kind> {
    Ok(match name {
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "DoubleStorage" => Kind::Double,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        other => anyhow::bail!("unsupported storage type {other}"),
    })
}

/// The pickle opcodes `torch.save` emits (protocols 2 to 4).
struct Unpickler<'a> {
    b: &'a [u8],
    p: usize,
    stack: Vec<Value>,
    memo: HashMap<u64, Value>,
}

impl<'a> Unpickler<'a> {
    fn new(b: &'a [u8]) -> Self {
        Unpickler {
            b,
            p: 0,
            stack: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> anyhow::Result<&'a [u8]> {
        let s = self.b.get(self.p..self.p + n).context("truncated pickle")?;
        self.p += n;
        Ok(s)
    }

    fn u8(&mut self) -> anyhow::Result<u64> {
        Ok(self.take(1)?[0] as u64)
    }

    fn u32(&mut self) -> anyhow::Result<u64> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?) as u64)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let rest = &self.b[self.p..];
        let n = rest
            .iter()
            .position(|&c| c == b'\n')
            .context("truncated pickle")?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.p += n + 1;
        Ok(s)
    }

    fn pop(&mut self) -> anyhow::Result<Value> {
        self.stack.pop().context("pickle stack underflow")
    }

    fn pop_mark(&mut self) -> anyhow::Result<Vec<Value>> {
        let m = self
            .stack
            .iter()
            .rposition(|v| matches!(v, Value::Mark))
            .context("pickle MARK missing")?;
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn top(&mut self) -> anyhow::Result<&mut Value> {
        self.stack.last_mut().context("pickle stack underflow")
    }

    fn run(mut self) -> anyhow::Result<Value> {
        loop {
            let op = self.u8()? as u8;
            match op {
                // STOP
                b'.' => return self.pop(),
                // PROTO, FRAME
                0x80 => {
                    self.u8()?;
                }
                0x95 => {
                    self.take(8)?;
                }
                b'K' | b'M' | b'J' | 0x8a | b'G' => self.number(op)?,
                b'X' | 0x8c | b'T' | b'U' | 0x8d | b'B' | b'C' => self.bytes(op)?,
                b'c' | 0x93 | b'Q' | b'R' | 0x81 | b'b' => self.object(op)?,
                b'q' | b'r' | 0x94 | b'h' | b'j' => self.memo_op(op)?,
                _ => self.container(op)?,
            }
        }
    }

    /// Integers and floats (floats are not needed and become `Object`).
    fn number(&mut self, op: u8) -> anyhow::Result<()> {
        match op {
            b'K' => {
                let v = self.u8()? as i64;
                self.stack.push(Value::Int(v));
            }
            b'M' => {
                let s = self.take(2)?;
                self.stack
                    .push(Value::Int(u16::from_le_bytes([s[0], s[1]]) as i64));
            }
            b'J' => {
                let v = i32::from_le_bytes(self.take(4)?.try_into()?) as i64;
                self.stack.push(Value::Int(v));
            }
            0x8a => {
                let n = self.u8()? as usize;
                let s = self.take(n)?;
                anyhow::ensure!(n <= 8, "integer of {n} bytes");
                let mut buf = if s.last().is_some_and(|&x| x & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(s);
                self.stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                self.take(8)?;
                self.stack.push(Value::Object);
            }
            _ => unreachable!("opcode {op:#x} is not a number opcode"),
        }
        Ok(())
    }

    /// Strings, and byte strings (not needed: they become `Object`).
    fn bytes(&mut self, op: u8) -> anyhow::Result<()> {
        match op {
            b'X' | 0x8c | b'T' | b'U' | 0x8d => {
                let n = match op {
                    0x8c | b'U' => self.u8()? as usize,
                    0x8d => u64::from_le_bytes(self.take(8)?.try_into()?) as usize,
                    _ => self.u32()? as usize,
                };
                let s = String::from_utf8_lossy(self.take(n)?).into_owned();
                self.stack.push(Value::Str(s));
            }
            b'B' | b'C' => {
                let n = if op == b'C' { self.u8()? } else { self.u32()? } as usize;
                self.take(n)?;
                self.stack.push(Value::Object);
            }
            _ => unreachable!("opcode {op:#x} is not a bytes opcode"),
        }
        Ok(())
    }

    /// Globals, persistent ids (tensor storages), calls and object state.
    fn object(&mut self, op: u8) -> anyhow::Result<()> {
        match op {
            b'c' => {
                let module = self.line()?;
                let name = self.line()?;
                self.stack.push(Value::Global(module, name));
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(m, n)),
                    _ => anyhow::bail!("STACK_GLOBAL needs two strings"),
                }
            }
            b'Q' => {
                let pid = self.pop()?;
                self.stack.push(persistent(pid)?);
            }
            b'R' | 0x81 => {
                let args = self.pop()?;
                let callable = self.pop()?;
                self.stack.push(reduce(callable, args)?);
            }
            b'b' => {
                // BUILD: object state (OrderedDict metadata, attributes): not needed.
                self.pop()?;
            }
            _ => unreachable!("opcode {op:#x} is not an object opcode"),
        }
        Ok(())
    }

    /// The memo: PUT, BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET.
    fn memo_op(&mut self, op: u8) -> anyhow::Result<()> {
        match op {
            b'q' | b'r' | 0x94 => {
                let key = match op {
                    b'q' => self.u8()?,
                    b'r' => self.u32()?,
                    _ => self.memo.len() as u64,
                };
                let v = self.top()?.clone();
                self.memo.insert(key, v);
            }
            b'h' | b'j' => {
                let key = if op == b'h' { self.u8()? } else { self.u32()? };
                let v = self.memo.get(&key).context("pickle memo miss")?.clone();
                self.stack.push(v);
            }
            _ => unreachable!("opcode {op:#x} is not a memo opcode"),
        }
        Ok(())
    }

    /// Constants, marks and the containers (tuples, lists, dicts); any
    /// other opcode is an error.
    fn container(&mut self, op: u8) -> anyhow::Result<()> {
        match op {
            b'}' => self.stack.push(Value::Dict(Vec::new())),
            b']' => self.stack.push(Value::List(Vec::new())),
            b')' => self.stack.push(Value::Tuple(Vec::new())),
            b'(' => self.stack.push(Value::Mark),
            b'N' => self.stack.push(Value::None),
            0x88 | 0x89 => self.stack.push(Value::Object),
            b't' => {
                let items = self.pop_mark()?;
                self.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                let at = self
                    .stack
                    .len()
                    .checked_sub(n)
                    .context("pickle stack underflow")?;
                let items = self.stack.split_off(at);
                self.stack.push(Value::Tuple(items));
            }
            b'a' => {
                let v = self.pop()?;
                if let Value::List(l) = self.top()? {
                    l.push(v);
                }
            }
            b'e' => {
                let items = self.pop_mark()?;
                if let Value::List(l) = self.top()? {
                    l.extend(items);
                }
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                if let Value::Dict(d) = self.top()? {
                    d.push((k, v));
                }
            }
            b'u' => {
                let items = self.pop_mark()?;
                let mut it = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                if let Value::Dict(d) = self.top()? {
                    d.extend(pairs);
                }
            }
            other => anyhow::bail!(
                "unsupported pickle opcode 0x{other:02x} at byte {}",
                self.p - 1
            ),
        }
        Ok(())
    }
}

fn persistent(pid: Value) -> anyhow::Result<Value> {
    let Value::Tuple(t) = pid else {
        anyhow::bail!("unexpected persistent id {pid:?}");
    };
    match t.as_slice() {
        [Value::Str(tag), Value::Global(_, ty), Value::Str(key), _, _] if tag == "storage" => {
            Ok(Value::Storage(Storage {
                key: key.clone(),
                kind: storage_kind(ty)?,
            }))
        }
        _ => anyhow::bail!("unexpected persistent id {t:?}"),
    }
}

fn reduce(callable: Value, args: Value) -> anyhow::Result<Value> {
    let Value::Global(module, name) = &callable else {
        return Ok(Value::Object);
    };
    let args = match args {
        Value::Tuple(a) => a,
        _ => return Ok(Value::Object),
    };
    Ok(match (module.as_str(), name.as_str()) {
        ("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor") => {
            let Some(Value::Storage(storage)) = args.first() else {
                anyhow::bail!("a tensor without a storage");
            };
            Value::Tensor(TensorRef {
                storage: storage.clone(),
                offset: args.get(1).context("tensor offset")?.int()?,
                size: args.get(2).context("tensor size")?.ints()?,
                stride: args.get(3).context("tensor stride")?.ints()?,
            })
        }
        ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => {
            args.into_iter().next().unwrap_or(Value::Object)
        }
        ("collections", "OrderedDict") | ("builtins", "dict") => Value::Dict(Vec::new()),
        _ => Value::Object,
    })
}
