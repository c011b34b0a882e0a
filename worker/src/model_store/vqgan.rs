//! The vqgan model directory: `config.json` (taming's `embed_dim`, `n_embed`,
//! `ddconfig`) and `model.safetensors` (taming's state-dict keys).
//!
//! Published checkpoints come as taming's training output: a PyTorch
//! Lightning `last.ckpt` (a `torch.save` zip archive whose `state_dict` also
//! holds the loss networks) and the run's `model.yaml`. [`convert`] turns
//! them into the layout above without Python: it reads the zip archive and
//! the subset of pickle that `torch.save` writes, keeps the model's tensors,
//! and takes `model.params` from the YAML.

use super::{Checkpoint, Download};
use crate::models::vqgan::{DdConfig, Vqgan, VqganConfig, TAMING_NORM_EPS};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The published VQGANs (taming-transformers' ImageNet models, as linked
/// from its README). No SHA-256 is published for them: `fetch` needs
/// `--sha256` or `--accept-unpinned`; [`convert_fetched`] then writes the
/// model files.
pub fn catalog() -> Vec<Checkpoint> {
    let heibox = |share: &str, file: &str, name: &str| Download {
        url: format!("https://heibox.uni-heidelberg.de/d/{share}/files/?p=%2F{file}&dl=1"),
        file: name.to_string(),
        sha256: None,
    };
    [
        ("vqgan_imagenet_f16_16384", "a7530b09fed84f80a887"),
        ("vqgan_imagenet_f16_1024", "8088892a516d4e3baf92"),
    ]
    .into_iter()
    .map(|(name, share)| Checkpoint {
        name,
        engine_dir: "vqgan",
        files: vec![
            heibox(share, "ckpts%2Flast.ckpt", CKPT_FILE),
            heibox(share, "configs%2Fmodel.yaml", YAML_FILE),
        ],
        config_json: None,
        convert: Some(|ckpt, dir| convert(ckpt, &dir.join(YAML_FILE), dir)),
    })
    .collect()
}

/// Names `fetch` gives the downloaded files in the vqgan directory.
pub const CKPT_FILE: &str = "last.ckpt";
pub const YAML_FILE: &str = "model.yaml";

/// Converts `dir/last.ckpt` and `dir/model.yaml` (as fetched) into
/// `dir/config.json` and `dir/model.safetensors`.
pub fn convert_fetched(dir: &Path) -> anyhow::Result<()> {
    convert(&dir.join(CKPT_FILE), &dir.join(YAML_FILE), dir)
}

/// Converts taming's `ckpt` (Lightning checkpoint or bare state dict) and
/// its `yaml` into a vqgan directory `out`, and checks that it loads.
pub fn convert(ckpt: &Path, yaml: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(yaml).with_context(|| format!("reading {}", yaml.display()))?;
    let cfg = config_from_yaml(&text).with_context(|| format!("in {}", yaml.display()))?;
    let tensors = ckpt::read_state_dict(ckpt)
        .with_context(|| format!("reading checkpoint {}", ckpt.display()))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Vqgan::new(vs.root(), &cfg);
    let mut wanted: Vec<String> = vs.variables().into_keys().collect();
    wanted.sort();
    let mut kept = Vec::with_capacity(wanted.len());
    for name in &wanted {
        let t = tensors
            .get(name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))?;
        kept.push((name.as_str(), t.to_kind(Kind::Float)));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    let weights = out.join("model.safetensors");
    Tensor::write_safetensors(&kept, &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    Vqgan::load(out, Device::Cpu).context("loading the converted model")?;
    Ok(())
}

/// `model.params` of taming's YAML as a config (`lossconfig` and the rest
/// are ignored).
pub fn config_from_yaml(text: &str) -> anyhow::Result<VqganConfig> {
    let doc = yaml::parse(text)?;
    let params = doc
        .get("model")
        .and_then(|m| m.get("params"))
        .context("no model.params in the YAML")?;
    let cfg: VqganConfig = serde_json::from_value(params.clone())
        .context("model.params is not a VQGAN configuration")?;
    cfg.validate()?;
    Ok(cfg)
}

/// The subset of YAML that taming's configs use: nested mappings by
/// indentation, block (`- x`) and flow (`[a, b]`) sequences of scalars,
/// and plain scalars (numbers, booleans, null, strings), with comments.
mod yaml {
    use serde_json::{Map, Value};

    struct Line<'a> {
        indent: usize,
        text: &'a str,
        number: usize,
    }

    pub fn parse(text: &str) -> anyhow::Result<Value> {
        let lines: Vec<Line> = text
            .lines()
            .enumerate()
            .filter_map(|(i, raw)| {
                let body = strip_comment(raw).trim_end();
                let trimmed = body.trim_start();
                (!trimmed.is_empty() && trimmed != "---").then(|| Line {
                    indent: body.len() - trimmed.len(),
                    text: trimmed,
                    number: i + 1,
                })
            })
            .collect();
        let mut pos = 0;
        let v = block(&lines, &mut pos, 0)?;
        if let Some(l) = lines.get(pos) {
            anyhow::bail!("line {}: unexpected indentation", l.number);
        }
        Ok(v)
    }

    fn strip_comment(line: &str) -> &str {
        let mut quote = None;
        for (i, c) in line.char_indices() {
            match (c, quote) {
                ('\'' | '"', None) => quote = Some(c),
                (c, Some(q)) if c == q => quote = None,
                ('#', None) if i == 0 || line[..i].ends_with(' ') => return &line[..i],
                _ => {}
            }
        }
        line
    }

    fn block(lines: &[Line], pos: &mut usize, indent: usize) -> anyhow::Result<Value> {
        let Some(first) = lines.get(*pos) else {
            return Ok(Value::Null);
        };
        if first.text.starts_with("- ") || first.text == "-" {
            let mut items = Vec::new();
            while let Some(l) = lines.get(*pos) {
                if l.indent != indent || !(l.text.starts_with("- ") || l.text == "-") {
                    break;
                }
                *pos += 1;
                items.push(scalar(l.text[1..].trim()));
            }
            return Ok(Value::Array(items));
        }
        let mut map = Map::new();
        while let Some(l) = lines.get(*pos) {
            if l.indent < indent {
                break;
            }
            anyhow::ensure!(
                l.indent == indent,
                "line {}: unexpected indentation",
                l.number
            );
            let (key, rest) = l
                .text
                .split_once(':')
                .filter(|(_, r)| r.is_empty() || r.starts_with(' '))
                .with_context_line(l.number)?;
            *pos += 1;
            let rest = rest.trim();
            let value = if rest.is_empty() {
                match lines.get(*pos) {
                    Some(n) if n.indent > indent => block(lines, pos, n.indent)?,
                    // A sequence may sit at the key's own indentation.
                    Some(n) if n.indent == indent && n.text.starts_with("- ") => {
                        block(lines, pos, indent)?
                    }
                    _ => Value::Null,
                }
            } else {
                scalar(rest)
            };
            map.insert(unquote(key.trim()).to_string(), value);
        }
        Ok(Value::Object(map))
    }

    trait LineContext<T> {
        fn with_context_line(self, line: usize) -> anyhow::Result<T>;
    }

    impl<T> LineContext<T> for Option<T> {
        fn with_context_line(self, line: usize) -> anyhow::Result<T> {
            self.ok_or_else(|| anyhow::anyhow!("line {line}: expected `key: value`"))
        }
    }

    fn unquote(s: &str) -> &str {
        for q in ['"', '\''] {
            if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
                return inner;
            }
        }
        s
    }

    fn scalar(s: &str) -> Value {
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
            let items = inner
                .split(',')
                .map(str::trim)
                .filter(|x| !x.is_empty())
                .map(scalar)
                .collect();
            return Value::Array(items);
        }
        match s {
            "true" | "True" => return Value::Bool(true),
            "false" | "False" => return Value::Bool(false),
            "null" | "~" | "None" => return Value::Null,
            _ => {}
        }
        if let Ok(i) = s.parse::<i64>() {
            return Value::from(i);
        }
        if let Ok(f) = s.parse::<f64>() {
            return Value::from(f);
        }
        Value::String(unquote(s).to_string())
    }
}

/// The tiny model of `init-tiny`: three levels (f = 4), 32 channels, 256 codes.
pub fn tiny_config() -> VqganConfig {
    VqganConfig {
        embed_dim: 16,
        n_embed: 256,
        ddconfig: DdConfig {
            double_z: false,
            z_channels: 32,
            resolution: 64,
            in_channels: 3,
            out_ch: 3,
            ch: 32,
            ch_mult: vec![1, 1, 1],
            num_res_blocks: 1,
            attn_resolutions: vec![16],
            dropout: 0.0,
            norm_eps: TAMING_NORM_EPS,
        },
    }
}

/// Writes a tiny random-weight vqgan model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    write_random(dir, &tiny_config(), 0x7a3b)
}

/// Writes a model of `cfg` with random weights drawn from `seed` into `dir`
/// (the same seed gives the same files).
pub fn write_random(dir: &Path, cfg: &VqganConfig, seed: u64) -> anyhow::Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Vqgan::new(vs.root(), cfg);
    randomize(&vs, seed);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string_pretty(cfg)? + "\n")
        .with_context(|| format!("writing {}", config.display()))?;
    let weights = dir.join("model.safetensors");
    vs.save(&weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    Ok(())
}

/// Fills every variable with values that keep activations in a useful range:
/// norm scales near 1, small biases, convolution weights of variance
/// 1/fan-in, and a codebook spread over about ±1 (so that latents, and the
/// images decoded from them, vary).
fn randomize(vs: &nn::VarStore, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vars {
        let shape = var.size();
        let n: i64 = shape.iter().product();
        let fan_in: i64 = shape.iter().skip(1).product();
        let (center, half) = if name == "quantize.embedding.weight" {
            (0.0, 1.0)
        } else if name.ends_with(".bias") {
            (0.0, 0.05)
        } else if name.contains("norm") {
            (1.0, 0.1)
        } else {
            (0.0, (3.0 / fan_in.max(1) as f64).sqrt())
        };
        let values: Vec<f32> = (0..n)
            .map(|_| (center + half * rng.gen_range(-1.0..1.0)) as f32)
            .collect();
        var.copy_(&Tensor::from_slice(&values).reshape(&shape));
    }
}

/// Reading `torch.save` archives: a zip file (entries stored, not
/// compressed) holding `data.pkl` and one file per storage.
mod ckpt {
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
                    0x80 => {
                        self.u8()?;
                    }
                    0x95 => {
                        self.take(8)?;
                    }
                    b'.' => return self.pop(),
                    b'}' => self.stack.push(Value::Dict(Vec::new())),
                    b']' => self.stack.push(Value::List(Vec::new())),
                    b')' => self.stack.push(Value::Tuple(Vec::new())),
                    b'(' => self.stack.push(Value::Mark),
                    b'N' => self.stack.push(Value::None),
                    0x88 | 0x89 => self.stack.push(Value::Object),
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
                        // Object state (OrderedDict metadata, attributes): not needed.
                        self.pop()?;
                    }
                    other => anyhow::bail!(
                        "unsupported pickle opcode 0x{other:02x} at byte {}",
                        self.p - 1
                    ),
                }
            }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_subset_reads_mappings_sequences_scalars_and_comments() {
        let text = "# a run\na:\n  b: 1   # one\n  c: 'x # not a comment'\n  d:\n  - 1\n  - 2.5\n  e: [true, False, null]\n  f:\n    g: \"s\"\nh: 4.5e-06\n";
        let v = yaml::parse(text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": {"b": 1, "c": "x # not a comment", "d": [1, 2.5],
                "e": [true, false, null], "f": {"g": "s"}}, "h": 4.5e-6})
        );
        let err = yaml::parse("a:\n    b: 1\n  c: 2\n").unwrap_err();
        assert!(err.to_string().contains("line 3"), "{err}");
        assert!(yaml::parse("a b c\n").is_err());
    }

    #[test]
    fn init_tiny_writes_a_loadable_deterministic_model() {
        let a = std::env::temp_dir().join(format!("kiln-vqgan-tiny-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("kiln-vqgan-tiny-b-{}", std::process::id()));
        init_tiny(&a).unwrap();
        init_tiny(&b).unwrap();
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        assert_eq!(read(&a, "model.safetensors"), read(&b, "model.safetensors"));
        let loaded = Vqgan::load(&a, Device::Cpu).unwrap();
        assert_eq!(loaded.model.config, tiny_config());
        let (lo, hi) = loaded.model.quantize.range();
        assert!(
            (hi - lo).min().double_value(&[]) > 1.0,
            "the codebook spreads"
        );
        let x = tch::no_grad(|| {
            let idx = Tensor::arange(16, (tch::Kind::Int64, Device::Cpu)).view([1, 16]);
            loaded.model.decode_indices(&idx, 4, 4)
        });
        assert_eq!(x.size(), [1, 3, 16, 16]);
        assert!(
            x.std(true).double_value(&[]) > 1e-3,
            "decoded images are not flat"
        );
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}
