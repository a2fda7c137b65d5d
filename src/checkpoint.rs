//! Checkpoints as safetensors files with torchvision-compatible names.
//!
//! A model keeps all its parameters in one flat f32 buffer and its BatchNorm running statistics in a second one;
//! a [`Layout`] names every tensor of a buffer (torchvision's names, e.g. `layer1.0.bn1.running_mean`) with its
//! shape and offset. This module writes and reads such buffers, model-independently:
//!
//! - [`save`] writes one or more [`Part`]s (a layout, its flat buffer and an optional name prefix such as
//!   `encoder_k.`), optional i64 scalars (torchvision's `num_batches_tracked`, a 0-d int64 tensor that
//!   `load_state_dict(strict=True)` requires) and optional string metadata (safetensors' `__metadata__`). The write
//!   is atomic: a temporary file in the target's directory is written, fsynced and renamed over the target, so a
//!   crash or an error leaves either the old file or the new one, never a half-written one.
//! - [`load`] reads and validates a file into a [`Checkpoint`]; [`Checkpoint::restore`] (or [`load_into`]) checks
//!   every expected tensor (present, dtype F32, exact shape) and only then copies, so on error the buffers are
//!   unchanged. [`LoadOptions`] skips tensors by name prefix (e.g. `fc.` when a head of another shape is attached)
//!   and chooses whether tensors of the file that nothing expects are an error (strict, like torch) or reported.
//!
//! Every error names the file, and the tensor where one is involved. A truncated or corrupt file is
//! [`Error::BadFile`], never a panic.
//!
//! The file is plain safetensors: `safetensors.torch.load_file` followed by `load_state_dict` reads it. Tensors are
//! written in layout order, i64 scalars first so that every tensor stays aligned to its element size.
//!
//! ```
//! use moco::checkpoint::{self, LoadOptions, Part, PartMut};
//! use moco::nn::Layout;
//! use std::collections::BTreeMap;
//! let mut layout = Layout::default();
//! layout.push("fc.weight", &[2, 3]);
//! layout.push("fc.bias", &[2]);
//! let params: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
//! let path = std::env::temp_dir().join(format!("moco_doc_{}.safetensors", std::process::id()));
//! let meta = BTreeMap::from([("step".to_string(), "100".to_string())]);
//! checkpoint::save(&path, &[Part::new(&layout, &params)], &[], &meta).unwrap();
//!
//! let ck = checkpoint::load(&path).unwrap();
//! assert_eq!(ck.meta("step"), Some("100"));
//! let mut back = vec![0.0f32; layout.len];
//! ck.restore(&mut [PartMut::new(&layout, &mut back)], &[], &LoadOptions::default()).unwrap();
//! assert_eq!(back, params);
//! # std::fs::remove_file(&path).unwrap();
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use crate::nn::{Layout, ParamInfo};
pub use safetensors::Dtype;

use crate::error::{Error, Result};

/// Name safetensors reserves for the string metadata map.
const METADATA_KEY: &str = "__metadata__";
/// Largest header this module writes or reads (the limit of the safetensors crate).
const MAX_HEADER: usize = 100_000_000;
/// How many names an error lists before it says "and N more".
const LIST_NAMES: usize = 8;

fn list(names: &[String]) -> String {
    let mut s = names.iter().take(LIST_NAMES).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > LIST_NAMES {
        s.push_str(&format!(" and {} more", names.len() - LIST_NAMES));
    }
    s
}

fn checked_len(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Checks that `layout` describes a flat buffer of `buffer_len` f32 elements: `layout.len == buffer_len`, every
/// tensor named (non-empty, not `__metadata__`, unique) and inside the buffer, and no two tensors overlapping.
/// Zero-sized tensors are allowed and overlap nothing.
pub fn validate_layout(layout: &Layout, buffer_len: usize) -> Result<()> {
    let op = "checkpoint layout";
    if layout.len != buffer_len {
        return Err(Error::shape(
            op,
            format!("a buffer of layout.len = {} elements", layout.len),
            format!("{buffer_len} elements"),
        ));
    }
    let mut names = BTreeSet::new();
    let mut ranges = Vec::with_capacity(layout.tensors.len());
    for t in &layout.tensors {
        if t.name.is_empty() || t.name == METADATA_KEY {
            return Err(Error::shape(op, "a non-empty tensor name other than `__metadata__`", format!("`{}`", t.name)));
        }
        if !names.insert(t.name.as_str()) {
            return Err(Error::shape(op, "unique tensor names", format!("`{}` twice", t.name)));
        }
        let end = checked_len(&t.shape).and_then(|n| t.offset.checked_add(n));
        match end {
            Some(end) if end <= buffer_len => {
                if end > t.offset {
                    ranges.push((t.offset, end, t.name.as_str()));
                }
            }
            _ => {
                return Err(Error::shape(
                    op,
                    format!("tensor `{}` inside the buffer of {buffer_len} elements", t.name),
                    format!("offset {} + shape {:?}", t.offset, t.shape),
                ))
            }
        }
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        let ((_, end_a, a), (start_b, _, b)) = (w[0], w[1]);
        if start_b < end_a {
            return Err(Error::shape(
                op,
                "non-overlapping tensors",
                format!("`{a}` (ends at {end_a}) overlaps `{b}` (starts at {start_b})"),
            ));
        }
    }
    Ok(())
}

/// One flat buffer to save: its layout, its data and a prefix put in front of every name in the file.
#[derive(Clone, Copy, Debug)]
pub struct Part<'a> {
    /// Prefix of every name in the file, e.g. `encoder_k.`; empty for torchvision's plain names.
    pub prefix: &'a str,
    /// The tensors of `data`.
    pub layout: &'a Layout,
    /// The flat buffer, `layout.len` elements.
    pub data: &'a [f32],
}

impl<'a> Part<'a> {
    /// A part with no prefix.
    pub fn new(layout: &'a Layout, data: &'a [f32]) -> Self {
        Self { prefix: "", layout, data }
    }
    /// The same part with names `prefix + name` in the file.
    pub fn with_prefix(self, prefix: &'a str) -> Self {
        Self { prefix, ..self }
    }
}

/// One flat buffer to restore: its layout, the buffer to fill and the prefix of its names in the file.
#[derive(Debug)]
pub struct PartMut<'a> {
    /// Prefix of every name in the file, e.g. `encoder_k.`; empty for torchvision's plain names.
    pub prefix: &'a str,
    /// The tensors of `data`.
    pub layout: &'a Layout,
    /// The flat buffer to fill, `layout.len` elements.
    pub data: &'a mut [f32],
}

impl<'a> PartMut<'a> {
    /// A part with no prefix.
    pub fn new(layout: &'a Layout, data: &'a mut [f32]) -> Self {
        Self { prefix: "", layout, data }
    }
    /// The same part with names `prefix + name` in the file.
    pub fn with_prefix(self, prefix: &'a str) -> Self {
        Self { prefix, ..self }
    }
}

/// torchvision's `num_batches_tracked` scalars for BatchNorm layers `bn_layers` (e.g.
/// [`crate::nn::ResNetLayout::bn_layers`]), all set to `count`: `("layer1.0.bn1.num_batches_tracked", count)`, ...
pub fn num_batches_tracked(bn_layers: &[String], count: i64) -> Vec<(String, i64)> {
    bn_layers.iter().map(|b| (format!("{b}.num_batches_tracked"), count)).collect()
}

/// Checks names across parts and scalars: valid layouts, and no name in the file twice.
fn check_names<'n>(
    path: &Path,
    parts: impl Iterator<Item = (&'n str, &'n Layout, usize)>,
    scalars: impl Iterator<Item = &'n str>,
) -> Result<()> {
    let mut seen = BTreeSet::new();
    for (prefix, layout, len) in parts {
        validate_layout(layout, len)?;
        for t in &layout.tensors {
            let name = format!("{prefix}{}", t.name);
            if !seen.insert(name.clone()) {
                return Err(Error::bad_file(path, format!("tensor `{name}` would appear twice (check the parts' prefixes)")));
            }
        }
    }
    for s in scalars {
        if s.is_empty() || s == METADATA_KEY {
            return Err(Error::bad_file(path, format!("invalid scalar name `{s}`")));
        }
        if !seen.insert(s.to_string()) {
            return Err(Error::bad_file(path, format!("tensor `{s}` would appear twice (scalar and tensor, or two scalars)")));
        }
    }
    Ok(())
}

/// Appends `s` as a JSON string literal (also the metrics' JSON lines, [`crate::report`]).
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_tensor(name: &str, dtype: &str, shape: &[usize], start: usize, end: usize) -> String {
    let mut out = String::new();
    json_str(&mut out, name);
    let dims = shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",");
    out.push_str(&format!(":{{\"dtype\":\"{dtype}\",\"shape\":[{dims}],\"data_offsets\":[{start},{end}]}}"));
    out
}

/// Saves `parts`, the i64 0-d tensors `scalars` and the string `metadata` to the safetensors file `path`,
/// atomically (temporary file in the same directory, fsync, rename over `path`, fsync of the directory).
///
/// Every part is checked with [`validate_layout`] and every name in the file must be unique; nothing is written
/// when a check fails. On any error the temporary file is removed and an existing `path` is left as it was.
pub fn save(
    path: impl AsRef<Path>,
    parts: &[Part<'_>],
    scalars: &[(String, i64)],
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    check_names(
        path,
        parts.iter().map(|p| (p.prefix, p.layout, p.data.len())),
        scalars.iter().map(|(n, _)| n.as_str()),
    )?;

    // Header: metadata, then i64 scalars (8-byte aligned after the 8-aligned header), then f32 tensors.
    let mut entries = Vec::new();
    if !metadata.is_empty() {
        let mut m = format!("\"{METADATA_KEY}\":{{");
        for (i, (k, v)) in metadata.iter().enumerate() {
            if i > 0 {
                m.push(',');
            }
            json_str(&mut m, k);
            m.push(':');
            json_str(&mut m, v);
        }
        m.push('}');
        entries.push(m);
    }
    let mut offset = 0usize;
    for (name, _) in scalars {
        entries.push(json_tensor(name, "I64", &[], offset, offset + 8));
        offset += 8;
    }
    for p in parts {
        for t in &p.layout.tensors {
            let bytes = t.len() * 4;
            entries.push(json_tensor(&format!("{}{}", p.prefix, t.name), "F32", &t.shape, offset, offset + bytes));
            offset += bytes;
        }
    }
    let mut header = format!("{{{}}}", entries.join(","));
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    if header.len() > MAX_HEADER {
        return Err(Error::bad_file(
            path,
            format!("header of {} bytes exceeds the safetensors limit of {MAX_HEADER}", header.len()),
        ));
    }

    write_atomic(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(header.as_bytes())?;
        for (_, v) in scalars {
            w.write_all(&v.to_le_bytes())?;
        }
        for p in parts {
            for t in &p.layout.tensors {
                write_f32(w, &p.data[t.range()])?;
            }
        }
        Ok(())
    })
}

fn write_f32(w: &mut dyn Write, data: &[f32]) -> std::io::Result<()> {
    if cfg!(target_endian = "little") {
        w.write_all(bytemuck::cast_slice(data))
    } else {
        for chunk in data.chunks(4096) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write_all(&bytes)?;
        }
        Ok(())
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `path` atomically: `write` fills a fresh temporary file next to `path`, which is fsynced and renamed over
/// `path`. On failure the temporary file is removed and `path` is untouched.
fn write_atomic(path: &Path, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let Some(file_name) = path.file_name() else {
        return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path")));
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // A fresh name: pid, a process-wide counter and the clock; create_new never clobbers a file of another writer.
    let (tmp, file) = {
        let mut attempt = 0;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut name = std::ffi::OsString::from(".");
            name.push(file_name);
            name.push(format!(".tmp-{}-{n}-{nanos}", std::process::id()));
            let tmp = dir.join(name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => attempt += 1,
                Err(e) => return Err(Error::io(&tmp, e)),
            }
        }
    };
    let written = (|| {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // Make the rename itself durable. Some filesystems refuse to fsync a directory; the file is in place already.
    #[cfg(unix)]
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Dtype and shape of one tensor in a [`Checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorEntry {
    /// Element type.
    pub dtype: Dtype,
    /// Shape (empty for a 0-d scalar).
    pub shape: Vec<usize>,
    /// Byte range in the data section.
    start: usize,
    end: usize,
}

/// What to do with the tensors of a file when restoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Tensors whose name in the file starts with one of these prefixes are neither loaded nor required nor
    /// counted as unexpected (e.g. `fc.` to keep a freshly initialised head of another shape).
    pub skip_prefixes: Vec<String>,
    /// When true (the default, like torch's `strict=True`), a tensor of the file that no part or scalar expects
    /// is an error; when false it is reported in [`Restored::unexpected`].
    pub strict: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { skip_prefixes: Vec::new(), strict: true }
    }
}

impl LoadOptions {
    /// Strict, nothing skipped (the default).
    pub fn strict() -> Self {
        Self::default()
    }
    /// Unexpected tensors of the file are reported, not rejected.
    pub fn lenient() -> Self {
        Self { strict: false, ..Self::default() }
    }
    /// Adds a prefix to skip.
    pub fn skip(mut self, prefix: impl Into<String>) -> Self {
        self.skip_prefixes.push(prefix.into());
        self
    }
    fn skipped(&self, name: &str) -> bool {
        self.skip_prefixes.iter().any(|p| name.starts_with(p.as_str()))
    }
}

/// What [`Checkpoint::restore`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Names (as in the file) of the tensors copied into the parts, in part and layout order.
    pub loaded: Vec<String>,
    /// Names left out by [`LoadOptions::skip_prefixes`]: expected ones left untouched in their buffers, and
    /// ones of the file that were not read.
    pub skipped: Vec<String>,
    /// Tensors of the file nothing expected (only when not strict), sorted.
    pub unexpected: Vec<String>,
    /// The requested i64 scalars that were read.
    pub scalars: BTreeMap<String, i64>,
}

/// A safetensors file read into memory and validated: header parsed, every tensor's bytes inside the file.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    tensors: BTreeMap<String, TensorEntry>,
    metadata: BTreeMap<String, String>,
}

/// Reads and validates the safetensors file `path`. A missing or unreadable file is [`Error::Io`]; a truncated or
/// corrupt one (header length, JSON, offsets, data shorter or longer than declared) is [`Error::BadFile`].
pub fn load(path: impl AsRef<Path>) -> Result<Checkpoint> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    Checkpoint::from_bytes(path, bytes)
}

/// Reads `path` and restores one flat buffer: [`load`] then [`Checkpoint::restore`] with one unprefixed part and
/// no scalars. With `strict`, every tensor of the file must belong to `layout` (or be skipped).
pub fn load_into(
    path: impl AsRef<Path>,
    layout: &Layout,
    buffer: &mut [f32],
    options: &LoadOptions,
) -> Result<Restored> {
    load(path)?.restore(&mut [PartMut::new(layout, buffer)], &[], options)
}

/// The string metadata (`__metadata__`) of the safetensors file `path`, after validating the whole file.
pub fn read_metadata(path: impl AsRef<Path>) -> Result<BTreeMap<String, String>> {
    Ok(load(path)?.metadata)
}

impl Checkpoint {
    /// Validates `bytes` as a safetensors file; `path` is used in error messages.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: Vec<u8>) -> Result<Self> {
        let path = path.as_ref();
        let total = bytes.len();
        // Our own checks first, so the common corruptions get precise messages.
        let Some(len_bytes) = bytes.get(..8) else {
            return Err(Error::bad_file(path, format!("file is {total} bytes, too short for the 8-byte header length")));
        };
        let n = u64::from_le_bytes(len_bytes.try_into().unwrap_or([0; 8]));
        if n > MAX_HEADER as u64 {
            return Err(Error::bad_file(
                path,
                format!(
                    "header length {n} exceeds the limit of {MAX_HEADER} bytes (corrupt or not a safetensors file)"
                ),
            ));
        }
        let n = n as usize;
        if n > total - 8 {
            return Err(Error::bad_file(path, format!("header declares {n} bytes but only {} follow (truncated file)", total - 8)));
        }
        // The safetensors crate parses the JSON and checks offsets and sizes. It returns errors for corrupt input;
        // catch_unwind is a last resort against an arithmetic overflow it could hit in builds with overflow checks.
        let parsed = std::panic::catch_unwind(|| safetensors::SafeTensors::read_metadata(&bytes));
        let (n, meta) = match parsed {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                let reason = match e {
                    safetensors::SafeTensorError::MetadataIncompleteBuffer => {
                        format!(
                            "data section is {} bytes, not what the header declares (truncated or trailing bytes)",
                            total - 8 - n
                        )
                    }
                    e => format!("invalid safetensors header: {e}"),
                };
                return Err(Error::bad_file(path, reason));
            }
            Err(_) => return Err(Error::bad_file(path, "invalid safetensors header (offsets overflow)")),
        };
        let data_start = 8 + n;
        let data_len = total - data_start;
        let mut tensors = BTreeMap::new();
        for (name, info) in meta.tensors() {
            let (start, end) = info.data_offsets;
            // Already checked by the crate; checked again so no slice can ever go out of bounds.
            if start > end || end > data_len {
                return Err(Error::bad_file(
                    path,
                    format!(
                        "tensor `{name}`: data offsets [{start}, {end}] outside the data section of {data_len} bytes"
                    ),
                ));
            }
            tensors.insert(name, TensorEntry { dtype: info.dtype, shape: info.shape.clone(), start, end });
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Self { path: path.to_path_buf(), bytes, data_start, tensors, metadata })
    }

    /// The file this checkpoint was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.keys().map(String::as_str).collect()
    }

    /// Dtype and shape of tensor `name`, if present.
    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.tensors.get(name)
    }

    /// The string metadata (`__metadata__`), empty when the file has none.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// One metadata value.
    pub fn meta(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    fn err(&self, reason: impl Into<String>) -> Error {
        Error::bad_file(&self.path, reason)
    }

    fn raw(&self, e: &TensorEntry) -> &[u8] {
        // In bounds: checked in from_bytes.
        &self.bytes[self.data_start + e.start..self.data_start + e.end]
    }

    /// Looks `name` up and checks dtype and (when given) shape.
    fn expect(&self, name: &str, dtype: Dtype, shape: Option<&[usize]>) -> Result<&TensorEntry> {
        let e = self.tensors.get(name).ok_or_else(|| self.err(format!("missing tensor `{name}`")))?;
        if e.dtype != dtype {
            return Err(self.err(format!("tensor `{name}`: expected dtype {dtype:?}, file has {:?}", e.dtype)));
        }
        if let Some(shape) = shape {
            if e.shape != shape {
                return Err(self.err(format!("tensor `{name}`: expected shape {shape:?}, file has {:?}", e.shape)));
            }
        }
        Ok(e)
    }

    /// The f32 tensor `name`: its shape and its elements.
    pub fn f32_tensor(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let e = self.expect(name, Dtype::F32, None)?;
        let v = self.raw(e).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok((e.shape.clone(), v))
    }

    /// The i64 scalar `name` (a 0-d I64 tensor, like torchvision's `num_batches_tracked`; shape `[1]` is accepted
    /// too).
    pub fn i64_scalar(&self, name: &str) -> Result<i64> {
        let e = self.expect(name, Dtype::I64, None)?;
        if !(e.shape.is_empty() || e.shape == [1]) {
            return Err(self.err(format!("tensor `{name}`: expected a scalar (shape []), file has {:?}", e.shape)));
        }
        let b = self.raw(e);
        let arr: [u8; 8] =
            b.try_into().map_err(|_| self.err(format!("tensor `{name}`: {} bytes for an i64", b.len())))?;
        Ok(i64::from_le_bytes(arr))
    }

    /// Fills every part from the file and reads the i64 `scalars`.
    ///
    /// Each expected tensor (`prefix + name` for every tensor of every part, and every scalar) that no skip prefix
    /// matches must be present with dtype F32 (I64 for scalars) and exactly the layout's shape. With
    /// `options.strict`, every tensor of the file must be expected or skipped. All problems are collected into one
    /// [`Error::BadFile`] that names the file and the tensors; the buffers are written only after every check has
    /// passed, so on error they are unchanged. Skipped tensors keep their buffer contents.
    pub fn restore(&self, parts: &mut [PartMut<'_>], scalars: &[String], options: &LoadOptions) -> Result<Restored> {
        check_names(
            &self.path,
            parts.iter().map(|p| (p.prefix, p.layout, p.data.len())),
            scalars.iter().map(String::as_str),
        )?;
        let mut out = Restored::default();
        let mut expected = BTreeSet::new();
        let (mut missing, mut problems) = (Vec::new(), Vec::new());
        let mut check = |name: String, dtype: Dtype, shape: &[usize], out: &mut Restored| {
            expected.insert(name.clone());
            if options.skipped(&name) {
                out.skipped.push(name);
                return;
            }
            match self.tensors.get(&name) {
                None => missing.push(name),
                Some(e) if e.dtype != dtype => {
                    problems.push(format!("tensor `{name}`: expected dtype {dtype:?}, file has {:?}", e.dtype))
                }
                Some(e) if e.shape != shape && !(dtype == Dtype::I64 && e.shape == [1]) => {
                    problems.push(format!("tensor `{name}`: expected shape {shape:?}, file has {:?}", e.shape))
                }
                Some(_) => {}
            }
        };
        for p in parts.iter() {
            for t in &p.layout.tensors {
                check(format!("{}{}", p.prefix, t.name), Dtype::F32, &t.shape, &mut out);
            }
        }
        for s in scalars {
            check(s.clone(), Dtype::I64, &[], &mut out);
        }
        let unexpected: Vec<String> = self.tensors.keys().filter(|n| !expected.contains(*n)).cloned().collect();
        for n in unexpected {
            if options.skipped(&n) {
                out.skipped.push(n);
            } else {
                out.unexpected.push(n);
            }
        }
        let mut reasons = Vec::new();
        if !missing.is_empty() {
            reasons.push(format!("missing {} tensor(s): {}", missing.len(), list(&missing)));
        }
        reasons.extend(problems);
        if options.strict && !out.unexpected.is_empty() {
            reasons.push(format!(
                "unexpected {} tensor(s) (strict load): {}",
                out.unexpected.len(),
                list(&out.unexpected)
            ));
        }
        if !reasons.is_empty() {
            return Err(self.err(reasons.join("; ")));
        }
        // Every check passed: copy.
        for p in parts.iter_mut() {
            for t in &p.layout.tensors {
                let name = format!("{}{}", p.prefix, t.name);
                if options.skipped(&name) {
                    continue;
                }
                let e = &self.tensors[&name];
                let src = self.raw(e);
                for (d, b) in p.data[t.range()].iter_mut().zip(src.chunks_exact(4)) {
                    *d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
                out.loaded.push(name);
            }
        }
        for s in scalars {
            if !options.skipped(s) {
                out.scalars.insert(s.clone(), self.i64_scalar(s)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_entries(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn failure_mid_write_keeps_the_old_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!(
            "moco_ck_unit_{}_{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        std::fs::write(&path, b"old contents").unwrap();
        let r = write_atomic(&path, |w| {
            w.write_all(&[7u8; 3 << 20])?; // past the BufWriter capacity: bytes reach the temporary file
            Err(std::io::Error::other("simulated failure mid-way"))
        });
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains("simulated failure") && msg.contains("model.safetensors"), "{msg}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old contents");
        assert_eq!(dir_entries(&dir), vec!["model.safetensors".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
