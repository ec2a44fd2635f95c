//! Redis' `DUMP` format for the module's values, both ways, written once for the whole
//! workspace (the integration tests and the fuzz target `restore`): [`envelope`] builds a
//! payload as Redis 7.0 writes one; [`load`] models what Redis 7.0 and this module's
//! `rdb_load` accept (the reads of `rdb.c`, `module.c` and `lzf_d.c`), so a caller knows, for
//! any payload, whether `RESTORE` must take it and which record the key then holds; [`read`]
//! takes a real `DUMP` reply apart (footer checked) into that record, its type and versions.
//! [`crc64`] and [`lzf_decompress`] are Redis' own. Plain functions over bytes: this module
//! needs no server and no dependency (the fuzz crate uses it with `default-features = false`).
//!
//! ```text
//! payload  type (7: RDB_TYPE_MODULE_2; 6: the older RDB_TYPE_MODULE)
//!          module type id (a length: 0x81 and 8 bytes big-endian; 54 bits of name, 10 of
//!          encoding version)
//!          the module's rdb_save: for type 7 each value is an opcode (5: a string) then the
//!          value, and an EOF opcode (0) ends it; type 6 has no opcodes
//!          RDB version (2 bytes, little-endian), CRC-64 (Jones) of all before (8 bytes, LE)
//! ```

/// `RDB_TYPE_MODULE_2` and `RDB_TYPE_MODULE`.
pub const MODULE_2: u8 = 7;
pub const MODULE_1: u8 = 6;

const OPCODE_EOF: u64 = 0;
const OPCODE_STRING: u64 = 5;

/// The module's data types, as `TYPE` names them, with their algorithm byte.
pub const TYPES: [(&str, u8); 3] = [
    ("ratelimFW", b'F'),
    ("ratelimSW", b'S'),
    ("ratelimTB", b'T'),
];

/// A module type id: the nine-character name in 6-bit symbols, then the encoding version.
pub fn type_id(name: &str, encver: u64) -> u64 {
    const CHARSET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert_eq!(name.len(), 9);
    let id = name.bytes().fold(0u64, |id, c| {
        let symbol = CHARSET
            .iter()
            .position(|&s| s == c)
            .expect("a type name symbol");
        id << 6 | symbol as u64
    });
    id << 10 | (encver & 1023)
}

/// Appends a length as `rdbSaveLen` writes it.
pub fn put_len(out: &mut Vec<u8>, len: u64) {
    match len {
        0..0x40 => out.push(len as u8),
        0x40..0x4000 => out.extend_from_slice(&[0x40 | (len >> 8) as u8, len as u8]),
        0x4000..=0xFFFF_FFFF => {
            out.push(0x80);
            out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        _ => {
            out.push(0x81);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// A whole payload: type byte, module id, the module's section, then version and CRC.
pub fn envelope(rdb_type: u8, id: u64, section: &[u8], rdb_version: u16) -> Vec<u8> {
    let mut out = vec![rdb_type];
    put_len(&mut out, id);
    out.extend_from_slice(section);
    seal(out, rdb_version)
}

/// Appends the footer: the RDB version and the CRC-64 of everything before it.
pub fn seal(mut out: Vec<u8>, rdb_version: u16) -> Vec<u8> {
    out.extend_from_slice(&rdb_version.to_le_bytes());
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The section `rdb_save` writes for one string buffer: opcode, plain string, EOF for
/// type 7; the plain string alone for type 6.
pub fn string_section(rdb_type: u8, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(blob.len() + 12);
    if rdb_type == MODULE_2 {
        put_len(&mut out, OPCODE_STRING);
    }
    put_len(&mut out, blob.len() as u64);
    out.extend_from_slice(blob);
    if rdb_type == MODULE_2 {
        put_len(&mut out, OPCODE_EOF);
    }
    out
}

/// CRC-64/Jones as Redis computes it (reflected, polynomial 0xad93d23594c935a9, init 0).
pub fn crc64(bytes: &[u8]) -> u64 {
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        const POLY: u64 = 0x95ac9329ac4bc9b5; // 0xad93d23594c935a9, bit-reversed
        std::array::from_fn(|i| {
            (0..8).fold(
                i as u64,
                |c, _| if c & 1 != 0 { c >> 1 ^ POLY } else { c >> 1 },
            )
        })
    });
    bytes.iter().fold(0u64, |crc, &b| {
        table[((crc ^ u64::from(b)) & 0xff) as usize] ^ crc >> 8
    })
}

/// What `RESTORE` of a payload does, as the model reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    /// Refused ("Bad data format"), and why.
    Refused(&'static str),
    /// A key of this type (index in [`TYPES`]) holding the record `blob` decodes to.
    Value { type_index: usize, blob: Vec<u8> },
}

/// The stream `rdbLoadObject` reads: the whole payload, footer included (Redis reads the
/// object from the full argument; nothing checks what is left before the footer).
struct Reader<'a> {
    bytes: &'a [u8],
}

type Read<T> = Result<T, &'static str>;

impl Reader<'_> {
    fn take(&mut self, n: u64) -> Read<&[u8]> {
        let n = usize::try_from(n).map_err(|_| "short read")?;
        if n > self.bytes.len() {
            return Err("short read");
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// `rdbLoadLenByRef`: a length, or a special encoding (`isencoded`).
    fn len_or_encoding(&mut self) -> Read<(bool, u64)> {
        let first = self.take(1)?[0];
        Ok(match first >> 6 {
            3 => (true, u64::from(first & 0x3f)),
            0 => (false, u64::from(first & 0x3f)),
            1 => (
                false,
                u64::from(first & 0x3f) << 8 | u64::from(self.take(1)?[0]),
            ),
            _ if first == 0x80 => {
                let b = self.take(4)?;
                (false, u64::from(u32::from_be_bytes(b.try_into().unwrap())))
            }
            _ if first == 0x81 => {
                let b = self.take(8)?;
                (false, u64::from_be_bytes(b.try_into().unwrap()))
            }
            _ => return Err("unknown length encoding"),
        })
    }

    /// `rdbLoadLen(rdb, NULL)`: an encoding byte reads as its 6-bit value; `u64::MAX` is
    /// `RDB_LENERR`.
    fn len(&mut self) -> Read<u64> {
        match self.len_or_encoding()? {
            (_, u64::MAX) => Err("RDB_LENERR"),
            (_, len) => Ok(len),
        }
    }

    /// `rdbGenericLoadStringObject(.., RDB_LOAD_PLAIN, ..)`.
    fn string(&mut self) -> Read<Vec<u8>> {
        match self.len_or_encoding()? {
            (false, u64::MAX) => Err("RDB_LENERR"),
            (false, len) => Ok(self.take(len)?.to_vec()),
            (true, enc @ 0..=2) => {
                let b = self.take(1 << enc)?;
                let value = match enc {
                    0 => i64::from(b[0] as i8),
                    1 => i64::from(i16::from_le_bytes(b.try_into().unwrap())),
                    _ => i64::from(i32::from_le_bytes(b.try_into().unwrap())),
                };
                Ok(value.to_string().into_bytes())
            }
            (true, 3) => {
                let compressed_len = self.len()?;
                let len = self.len()?;
                let compressed = self.take(compressed_len)?;
                lzf_decompress(compressed, len).ok_or("invalid LZF string")
            }
            (true, _) => Err("unknown string encoding"),
        }
    }
}

/// What `RESTORE key 0 <payload>` does with a payload whose version and CRC are right.
pub fn load(payload: &[u8]) -> Loaded {
    match load_object(payload) {
        Ok(dump) => Loaded::Value {
            type_index: dump.type_index,
            blob: dump.blob,
        },
        Err(why) => Loaded::Refused(why),
    }
}

/// A module value as a `DUMP` payload holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dump {
    /// [`MODULE_2`] (what Redis writes) or [`MODULE_1`].
    pub rdb_type: u8,
    /// The module type id: 54 bits of name, then 10 of encoding version.
    pub id: u64,
    /// The type, an index in [`TYPES`].
    pub type_index: usize,
    /// The RDB version of the footer (0 from [`load`], which does not read the footer).
    pub rdb_version: u16,
    /// The record the module saved: what `ratelimit_core`'s codec decodes.
    pub blob: Vec<u8>,
}

impl Dump {
    /// The type's name, as `TYPE` replies it (`ratelimFW`).
    pub fn type_name(&self) -> &'static str {
        TYPES[self.type_index].0
    }

    /// The module type's encoding version (the low 10 bits of the id).
    pub fn encoding_version(&self) -> u64 {
        self.id & 1023
    }
}

/// The RDB version in a payload's footer, if the CRC-64 after it is that of all before it.
pub fn footer(payload: &[u8]) -> Result<u16, &'static str> {
    let Some(at) = payload.len().checked_sub(10) else {
        return Err("shorter than a footer");
    };
    let (body, crc) = payload.split_at(at + 2);
    if crc64(body).to_le_bytes() != crc {
        return Err("wrong CRC-64");
    }
    Ok(u16::from_le_bytes([payload[at], payload[at + 1]]))
}

/// A `DUMP` reply taken apart: footer checked, then read as `RESTORE` reads it ([`load`]);
/// `Err` says why Redis would refuse it.
pub fn read(payload: &[u8]) -> Result<Dump, &'static str> {
    let rdb_version = footer(payload)?;
    Ok(Dump {
        rdb_version,
        ..load_object(payload)?
    })
}

fn load_object(payload: &[u8]) -> Read<Dump> {
    let mut r = Reader { bytes: payload };
    let rdb_type = r.take(1)?[0];
    if rdb_type != MODULE_1 && rdb_type != MODULE_2 {
        return Err("not a module type");
    }
    let id = r.len_or_encoding()?.1;
    // Types match on the name's 54 bits; the low 10 bits go to rdb_load as its version.
    let type_index = (TYPES.iter())
        .position(|(name, _)| type_id(name, 0) >> 10 == id >> 10)
        .ok_or("no matching module type")?;
    // The module's rdb_load: encoding version 1, one string buffer, a valid record. (Which
    // record, and whether it is valid, the harness asks `ratelimit_core`.)
    let string = id & 1023 == 1 && (rdb_type != MODULE_2 || r.len() == Ok(OPCODE_STRING));
    let blob = if string { r.string().ok() } else { None };
    if rdb_type == MODULE_2 {
        // Redis reads the EOF opcode whatever rdb_load returned.
        if r.len()? != OPCODE_EOF {
            return Err("no EOF opcode");
        }
    }
    Ok(Dump {
        rdb_type,
        id,
        type_index,
        rdb_version: 0,
        blob: blob.ok_or("rdb_load refused it")?,
    })
}

/// `lzf_decompress(in, in_len, out, len) == len`, as liblzf does it: `None` unless the
/// stream decodes to exactly `len` bytes without overrunning either buffer. (liblzf returns
/// 0 for errors too, so `len == 0` always succeeds.)
pub fn lzf_decompress(input: &[u8], len: u64) -> Option<Vec<u8>> {
    if len == 0 {
        return Some(Vec::new());
    }
    // Each control byte yields at most 264 bytes: a longer `len` cannot be met.
    if len > 264 * input.len() as u64 {
        return None;
    }
    let len = len as usize;
    let mut out = Vec::with_capacity(len);
    let mut ip = 0;
    while ip < input.len() {
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            if out.len() + run > len || ip + run > input.len() {
                return None;
            }
            out.extend_from_slice(&input[ip..ip + run]);
            ip += run;
        } else {
            let mut run = ctrl >> 5;
            let mut back = (ctrl & 0x1f) << 8;
            if ip >= input.len() {
                return None;
            }
            if run == 7 {
                run += usize::from(input[ip]);
                ip += 1;
                if ip >= input.len() {
                    return None;
                }
            }
            back += usize::from(input[ip]) + 1;
            ip += 1;
            if out.len() + run + 2 > len || back > out.len() {
                return None;
            }
            let from = out.len() - back;
            for i in 0..run + 2 {
                out.push(out[from + i]);
            }
        }
    }
    (out.len() == len).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_is_redis_check_value() {
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }

    #[test]
    fn a_sealed_envelope_reads_back() {
        let blob = b"\x03F\x02 a record".to_vec();
        let id = type_id("ratelimFW", 1);
        let payload = envelope(MODULE_2, id, &string_section(MODULE_2, &blob), 10);
        let dump = read(&payload).unwrap();
        assert_eq!(
            (dump.type_name(), dump.encoding_version()),
            ("ratelimFW", 1)
        );
        assert_eq!((dump.rdb_version, dump.id, &dump.blob), (10, id, &blob));
        let mut bad = payload.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(read(&bad), Err("wrong CRC-64"));
    }

    #[test]
    fn lzf_back_references_repeat() {
        // A literal run of 3 ("abc"), then 6 bytes from 3 back.
        let input = [2, b'a', b'b', b'c', 4 << 5, 2];
        assert_eq!(
            lzf_decompress(&input, 9).as_deref(),
            Some(&b"abcabcabc"[..])
        );
        assert_eq!(lzf_decompress(&input, 8), None);
    }
}
