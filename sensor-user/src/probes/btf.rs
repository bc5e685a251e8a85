//! Reader for the kernel's raw BTF (BPF Type Format), such as `/sys/kernel/btf/vmlinux`.
//!
//! The kernel programs must not hard-code struct offsets because they differ between kernel
//! versions and configurations. The daemon resolves them here from the running kernel's BTF and
//! passes them to the programs. The layout follows the kernel's `Documentation/bpf/btf.rst`.
//!
//! NOTE: split BTF (the per-module files under `/sys/kernel/btf/`) numbers its types after the
//! vmlinux types, so parsing such a file alone fails when a lookup follows a type id into vmlinux.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

const BTF_MAGIC: u16 = 0xeb9f;
const BTF_VERSION: u8 = 1;
/// Length of the header fields this reader uses. Newer kernels may write a longer header and
/// say so in `hdr_len`, so the sections are located from `hdr_len`, not from this constant.
const HEADER_LEN: usize = 24;
/// Length of the `struct btf_type` part that every type record starts with.
const TYPE_RECORD_LEN: usize = 12;
const MEMBER_LEN: usize = 12;
/// Maximum number of typedef, const, volatile, restrict and type_tag records followed in a row.
/// The longest such chain in Linux 6.18's vmlinux BTF is 6, so a longer one is treated as a cycle.
const MAX_MODIFIER_CHAIN: usize = 32;

const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Error from reading BTF or resolving a type or member in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("failed to read BTF file {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid BTF{} at byte offset {offset}: {reason}", describe_origin(.path))]
    Malformed {
        /// File the data came from, or `None` for bytes passed to [`Btf::parse`].
        path: Option<PathBuf>,
        /// Description of the invalid value.
        reason: String,
        /// Byte offset in the BTF data of the invalid header field or type record, or 0 when
        /// an offset sum overflows and no single record is at fault.
        offset: usize,
    },

    #[error("struct or union `{name}` not found in BTF")]
    TypeNotFound { name: String },

    #[error("member `{path}` not found in `{type_name}`: no member named `{missing}`")]
    MemberNotFound {
        type_name: String,
        path: String,
        /// Path component that matched no member.
        missing: String,
    },

    #[error(
        "member `{path}` of `{type_name}` is a {kind}, not a struct or union, \
         so the path cannot continue into it"
    )]
    NotStructOrUnion {
        type_name: String,
        /// Leading part of the requested path that names the offending member.
        path: String,
        kind: &'static str,
    },

    #[error("member `{path}` of `{type_name}` is a bitfield, so it has no byte offset")]
    Bitfield { type_name: String, path: String },
}

fn describe_origin(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!(" in {}", path.display()),
        None => String::new(),
    }
}

/// One `struct btf_type` record plus the kind-specific value this reader needs.
#[derive(Clone, Copy)]
struct TypeRecord {
    /// Byte offset of the record in the BTF data, for error messages.
    offset: usize,
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// Size in bytes for INT, STRUCT, UNION, ENUM, FLOAT and DATASEC, otherwise a type id.
    size_or_type: u32,
    /// INT encoding word for INT, index of the first member in `Btf::members` for STRUCT and
    /// UNION, zero for the other kinds.
    extra: u32,
}

/// One `struct btf_member` of a struct or union.
#[derive(Clone, Copy)]
struct MemberRecord {
    name_off: u32,
    type_id: u32,
    /// Bit offset, or with the parent's kind_flag set the bitfield size in bits 24-31 and the
    /// bit offset in bits 0-23.
    offset: u32,
}

/// Member found by [`Btf::find_member`], with its offset from the start of the searched type.
struct FoundMember {
    bit_offset: u64,
    type_id: u32,
    is_bitfield: bool,
    /// Byte offset of the struct or union record that lists the member, for error messages.
    parent_offset: usize,
}

/// Parsed BTF type information, used to look up struct layouts of the running kernel.
pub struct Btf {
    /// Type records in id order, so type id `n` is `types[n - 1]` because id 0 is `void`.
    types: Vec<TypeRecord>,
    members: Vec<MemberRecord>,
    /// Copy of the string section, which starts and ends with a NUL byte.
    strings: Vec<u8>,
    /// Struct and union ids by name, choosing the first definition with a non-zero size.
    composites_by_name: HashMap<Vec<u8>, u32>,
    /// File the BTF came from, named in errors found after parsing.
    origin: Option<PathBuf>,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The full type table runs to hundreds of thousands of entries, so print only its size.
        f.debug_struct("Btf")
            .field("origin", &self.origin)
            .field("types", &self.types.len())
            .field("named_structs_and_unions", &self.composites_by_name.len())
            .finish()
    }
}

/// Section boundaries taken from a validated header.
struct Header {
    type_start: usize,
    type_end: usize,
    str_start: usize,
    str_end: usize,
}

impl Btf {
    /// Parses raw BTF bytes in little-endian byte order.
    ///
    /// Checks the header, the section bounds, the length of every type record and every name
    /// offset. Type ids that records refer to are checked later, when a lookup follows them.
    /// Big-endian data, a bad magic number and versions other than 1 are rejected.
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        let header = parse_header(bytes)?;
        let strings = parse_strings(bytes, &header)?;
        let (types, members) = parse_types(bytes, &header, &strings)?;

        let mut btf = Btf {
            types,
            members,
            strings,
            composites_by_name: HashMap::new(),
            origin: None,
        };
        btf.index_composites();
        Ok(btf)
    }

    /// Reads and parses a BTF file such as `/sys/kernel/btf/vmlinux`.
    ///
    /// Read errors and invalid data both name `path`. The kernel provides
    /// `/sys/kernel/btf/vmlinux` since Linux 5.5, and only when built with
    /// `CONFIG_DEBUG_INFO_BTF`.
    pub fn from_file(path: &Path) -> Result<Btf, BtfError> {
        let bytes = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.to_path_buf(),
            source,
        })?;

        let mut btf = Btf::parse(&bytes).map_err(|error| match error {
            BtfError::Malformed { reason, offset, .. } => BtfError::Malformed {
                path: Some(path.to_path_buf()),
                reason,
                offset,
            },
            other => other,
        })?;
        btf.origin = Some(path.to_path_buf());
        Ok(btf)
    }

    /// Resolves the byte offset of a dot-separated member path inside a struct or union.
    ///
    /// Each component is searched through anonymous struct and union members at any depth, so
    /// `member_offset("mm_struct", "arg_start")` works although `arg_start` sits in an anonymous
    /// struct. Before descending into a member for the next component, typedef, const, volatile,
    /// restrict and type_tag records are skipped. Bitfield members and members that are not
    /// byte-aligned are rejected because they have no byte offset.
    pub fn member_offset(&self, type_name: &str, path: &str) -> Result<u32, BtfError> {
        let mut current = self.find_composite(type_name)?;
        // Record that refers to `current`, named if `current` turns out to be an invalid id.
        let mut referrer_offset = None;
        let mut bit_offset: u64 = 0;
        // Byte index in `path` where the component being resolved ends, so that errors can
        // name the leading part of the path that was resolved.
        let mut resolved_end = 0;

        for (index, component) in path.split('.').enumerate() {
            if index > 0 {
                let (composite, kind) = self.skip_modifiers(current, referrer_offset)?;
                if kind != KIND_STRUCT && kind != KIND_UNION {
                    return Err(BtfError::NotStructOrUnion {
                        type_name: type_name.to_owned(),
                        path: path.get(..resolved_end).unwrap_or(path).to_owned(),
                        kind: kind_name(kind),
                    });
                }
                current = composite;
                resolved_end += 1;
            }
            resolved_end += component.len();

            let member =
                self.find_member(current, component)?
                    .ok_or_else(|| BtfError::MemberNotFound {
                        type_name: type_name.to_owned(),
                        path: path.to_owned(),
                        missing: component.to_owned(),
                    })?;
            if member.is_bitfield {
                return Err(BtfError::Bitfield {
                    type_name: type_name.to_owned(),
                    path: path.get(..resolved_end).unwrap_or(path).to_owned(),
                });
            }

            bit_offset = bit_offset.checked_add(member.bit_offset).ok_or_else(|| {
                self.malformed(0, format!("offset of `{type_name}.{path}` overflows"))
            })?;
            current = member.type_id;
            referrer_offset = Some(member.parent_offset);
        }

        if !bit_offset.is_multiple_of(8) {
            // Each member was byte-aligned relative to its parent, so only a misaligned
            // anonymous struct or union can leave a remainder here.
            return Err(BtfError::Bitfield {
                type_name: type_name.to_owned(),
                path: path.to_owned(),
            });
        }
        u32::try_from(bit_offset / 8).map_err(|_| {
            self.malformed(
                0,
                format!(
                    "offset of `{type_name}.{path}` is {} bytes, which exceeds u32::MAX",
                    bit_offset / 8
                ),
            )
        })
    }

    /// Returns the size in bytes of a named struct or union, such as `upid`.
    pub fn struct_size(&self, type_name: &str) -> Result<u32, BtfError> {
        let id = self.find_composite(type_name)?;
        Ok(self.record(id, 0)?.size_or_type)
    }

    fn index_composites(&mut self) {
        for (index, record) in self.types.iter().enumerate() {
            if record.kind != KIND_STRUCT && record.kind != KIND_UNION {
                continue;
            }
            let name = string_at(&self.strings, record.name_off);
            if name.is_empty() {
                continue;
            }

            // Type ids start at 1, and `parse_types` rejects more than u32::MAX records.
            let id = (index + 1) as u32;
            let size = record.size_or_type;
            match self.composites_by_name.get_mut(name) {
                None => {
                    self.composites_by_name.insert(name.to_vec(), id);
                }
                Some(existing) => {
                    // An empty declaration of the same name may come first, and a lookup needs
                    // the definition with the real layout.
                    let existing_size = self.types[*existing as usize - 1].size_or_type;
                    if existing_size == 0 && size != 0 {
                        *existing = id;
                    }
                }
            }
        }
    }

    fn find_composite(&self, name: &str) -> Result<u32, BtfError> {
        self.composites_by_name
            .get(name.as_bytes())
            .copied()
            .ok_or_else(|| BtfError::TypeNotFound {
                name: name.to_owned(),
            })
    }

    /// Looks up type `id`, reporting an invalid id at `referrer_offset`, the byte offset of the
    /// record that contains the reference.
    fn record(&self, id: u32, referrer_offset: usize) -> Result<&TypeRecord, BtfError> {
        let index = (id as usize).wrapping_sub(1);
        self.types.get(index).ok_or_else(|| {
            self.malformed(
                referrer_offset,
                format!(
                    "type id {id} is out of range, expected 1..={}",
                    self.types.len()
                ),
            )
        })
    }

    fn members_of(&self, record: &TypeRecord) -> &[MemberRecord] {
        let start = record.extra as usize;
        let end = start + record.vlen as usize;
        self.members.get(start..end).unwrap_or(&[])
    }

    /// Follows typedef, const, volatile, restrict and type_tag records from `id` and returns the
    /// id and kind of the first other type, with kind 0 for `void`.
    fn skip_modifiers(
        &self,
        id: u32,
        referrer_offset: Option<usize>,
    ) -> Result<(u32, u8), BtfError> {
        let start_id = id;
        let mut id = id;
        let mut referrer_offset = referrer_offset.unwrap_or(0);

        for _ in 0..=MAX_MODIFIER_CHAIN {
            if id == 0 {
                return Ok((0, 0));
            }
            let record = self.record(id, referrer_offset)?;
            if !is_modifier(record.kind) {
                return Ok((id, record.kind));
            }
            referrer_offset = record.offset;
            id = record.size_or_type;
        }

        Err(self.malformed(
            referrer_offset,
            format!(
                "more than {MAX_MODIFIER_CHAIN} typedef, const, volatile, restrict or type_tag \
                 records follow each other from type id {start_id}, which suggests a cycle"
            ),
        ))
    }

    /// Searches struct or union `composite` for a member named `name`, descending into
    /// anonymous struct and union members in declaration order.
    fn find_member(&self, composite: u32, name: &str) -> Result<Option<FoundMember>, BtfError> {
        struct Frame {
            id: u32,
            base_bits: u64,
            next_member: usize,
        }

        // An explicit stack keeps deeply nested or cyclic input from overflowing the call
        // stack. Each anonymous type is entered once, which ends cycles and is correct for C
        // because an anonymous member's fields share the parent's namespace.
        let mut stack = vec![Frame {
            id: composite,
            base_bits: 0,
            next_member: 0,
        }];
        let mut entered = HashSet::from([composite]);

        while let Some(frame) = stack.last_mut() {
            let parent = self.record(frame.id, 0)?;
            let Some(member) = self.members_of(parent).get(frame.next_member).copied() else {
                stack.pop();
                continue;
            };
            frame.next_member += 1;
            let base_bits = frame.base_bits;

            let (member_bits, bitfield_size) = if parent.kind_flag {
                (member.offset & 0x00ff_ffff, member.offset >> 24)
            } else {
                (member.offset, 0)
            };
            let bit_offset = base_bits + u64::from(member_bits);
            let member_name = string_at(&self.strings, member.name_off);

            if member_name.is_empty() {
                let (target, kind) = self.skip_modifiers(member.type_id, Some(parent.offset))?;
                let is_composite = kind == KIND_STRUCT || kind == KIND_UNION;
                if is_composite && entered.insert(target) {
                    stack.push(Frame {
                        id: target,
                        base_bits: bit_offset,
                        next_member: 0,
                    });
                }
                continue;
            }
            if member_name != name.as_bytes() {
                continue;
            }

            let is_bitfield = bitfield_size != 0
                || !member_bits.is_multiple_of(8)
                || (!parent.kind_flag && self.is_int_bitfield(member.type_id, parent.offset)?);
            return Ok(Some(FoundMember {
                bit_offset,
                type_id: member.type_id,
                is_bitfield,
                parent_offset: parent.offset,
            }));
        }

        Ok(None)
    }

    /// Reports whether a member type is an INT narrower than its storage. Without the parent's
    /// kind_flag, BTF encodes a bitfield's width in the INT type instead of the member offset.
    fn is_int_bitfield(&self, type_id: u32, referrer_offset: usize) -> Result<bool, BtfError> {
        let (id, kind) = self.skip_modifiers(type_id, Some(referrer_offset))?;
        if kind != KIND_INT {
            return Ok(false);
        }

        let record = self.record(id, referrer_offset)?;
        let bits = u64::from(record.extra & 0xff);
        let bit_shift = (record.extra >> 16) & 0xff;
        Ok(bit_shift != 0 || bits != u64::from(record.size_or_type) * 8)
    }

    fn malformed(&self, offset: usize, reason: String) -> BtfError {
        BtfError::Malformed {
            path: self.origin.clone(),
            reason,
            offset,
        }
    }
}

fn malformed(offset: usize, reason: String) -> BtfError {
    BtfError::Malformed {
        path: None,
        reason,
        offset,
    }
}

fn read_u16(bytes: &[u8], pos: usize) -> Option<u16> {
    let field = bytes.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_le_bytes(field.try_into().ok()?))
}

fn read_u32(bytes: &[u8], pos: usize) -> Option<u32> {
    let field = bytes.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(field.try_into().ok()?))
}

/// Reads a u32 that the caller has already bounds-checked, so a failure means a bug in the
/// check and is still reported as invalid data instead of a panic.
fn read_checked_u32(bytes: &[u8], pos: usize) -> Result<u32, BtfError> {
    read_u32(bytes, pos).ok_or_else(|| malformed(pos, "unexpected end of data".to_owned()))
}

fn parse_header(bytes: &[u8]) -> Result<Header, BtfError> {
    if bytes.len() < HEADER_LEN {
        return Err(malformed(
            0,
            format!(
                "header is truncated: {} bytes, expected at least {HEADER_LEN}",
                bytes.len()
            ),
        ));
    }

    let magic = read_u16(bytes, 0).unwrap_or(0);
    if magic == BTF_MAGIC.swap_bytes() {
        return Err(malformed(
            0,
            "big-endian BTF is not supported, expected little-endian".to_owned(),
        ));
    }
    if magic != BTF_MAGIC {
        return Err(malformed(
            0,
            format!("invalid magic {magic:#06x}, expected {BTF_MAGIC:#06x}"),
        ));
    }

    let version = bytes.get(2).copied().unwrap_or(0);
    if version != BTF_VERSION {
        return Err(malformed(
            2,
            format!("unsupported BTF version {version}, expected {BTF_VERSION}"),
        ));
    }

    let hdr_len = read_checked_u32(bytes, 4)? as usize;
    if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
        return Err(malformed(
            4,
            format!(
                "invalid header length {hdr_len}, expected {HEADER_LEN} up to the data length {}",
                bytes.len()
            ),
        ));
    }

    let (type_start, type_end) = section_bounds(bytes, hdr_len, 8, "type")?;
    let (str_start, str_end) = section_bounds(bytes, hdr_len, 16, "string")?;
    Ok(Header {
        type_start,
        type_end,
        str_start,
        str_end,
    })
}

/// Reads the offset and length fields at `field_pos` and checks that the section they describe
/// lies inside `bytes`. Section offsets count from the end of the header.
fn section_bounds(
    bytes: &[u8],
    hdr_len: usize,
    field_pos: usize,
    section: &str,
) -> Result<(usize, usize), BtfError> {
    let offset = read_checked_u32(bytes, field_pos)? as usize;
    let len = read_checked_u32(bytes, field_pos + 4)? as usize;

    let start = hdr_len.checked_add(offset);
    let end = start.and_then(|start| start.checked_add(len));
    match (start, end) {
        (Some(start), Some(end)) if end <= bytes.len() => Ok((start, end)),
        _ => Err(malformed(
            field_pos,
            format!(
                "{section} section (offset {offset}, length {len} after a {hdr_len}-byte header) \
                 extends past the end of the data ({} bytes)",
                bytes.len()
            ),
        )),
    }
}

fn parse_strings(bytes: &[u8], header: &Header) -> Result<Vec<u8>, BtfError> {
    let strings = bytes.get(header.str_start..header.str_end).unwrap_or(&[]);

    // Name offset 0 must read as the empty string, and a final NUL guarantees that every name
    // offset inside the section reads a terminated string.
    if strings.first() != Some(&0) || strings.last() != Some(&0) {
        return Err(malformed(
            header.str_start,
            format!(
                "string section of {} bytes must start and end with a NUL byte",
                strings.len()
            ),
        ));
    }
    Ok(strings.to_vec())
}

fn parse_types(
    bytes: &[u8],
    header: &Header,
    strings: &[u8],
) -> Result<(Vec<TypeRecord>, Vec<MemberRecord>), BtfError> {
    let mut types = Vec::new();
    let mut members = Vec::new();
    let check_name = |name_off: u32, owner: &str, offset: usize| {
        if (name_off as usize) < strings.len() {
            Ok(())
        } else {
            Err(malformed(
                offset,
                format!(
                    "name offset {name_off} of {owner} is past the end of the {}-byte string section",
                    strings.len()
                ),
            ))
        }
    };

    let mut pos = header.type_start;
    while pos < header.type_end {
        let id = types.len() + 1;
        if id > u32::MAX as usize {
            return Err(malformed(pos, "more than u32::MAX types".to_owned()));
        }
        if header.type_end - pos < TYPE_RECORD_LEN {
            return Err(malformed(
                pos,
                format!(
                    "type id {id} is truncated: {} bytes left in the type section, expected {TYPE_RECORD_LEN}",
                    header.type_end - pos
                ),
            ));
        }

        let name_off = read_checked_u32(bytes, pos)?;
        let info = read_checked_u32(bytes, pos + 4)?;
        let size_or_type = read_checked_u32(bytes, pos + 8)?;
        let kind = ((info >> 24) & 0x1f) as u8;
        let vlen = (info & 0xffff) as u16;
        let kind_flag = info >> 31 == 1;
        check_name(name_off, &format!("type id {id}"), pos)?;

        let Some(trailer_len) = trailer_len(kind, vlen) else {
            return Err(malformed(
                pos,
                format!("type id {id} has unknown kind {kind}"),
            ));
        };
        let body = pos + TYPE_RECORD_LEN;
        if trailer_len > header.type_end - body {
            return Err(malformed(
                pos,
                format!(
                    "type id {id} ({}) needs {trailer_len} bytes of kind-specific data, \
                     but only {} bytes are left in the type section",
                    kind_name(kind),
                    header.type_end - body
                ),
            ));
        }

        let mut extra = 0;
        if kind == KIND_INT {
            extra = read_checked_u32(bytes, body)?;
        } else if kind == KIND_STRUCT || kind == KIND_UNION {
            // Member indexes stay below u32::MAX because each member takes 12 bytes of a
            // section whose length is a u32.
            extra = members.len() as u32;
            for index in 0..usize::from(vlen) {
                let member_pos = body + index * MEMBER_LEN;
                let member = MemberRecord {
                    name_off: read_checked_u32(bytes, member_pos)?,
                    type_id: read_checked_u32(bytes, member_pos + 4)?,
                    offset: read_checked_u32(bytes, member_pos + 8)?,
                };
                check_name(
                    member.name_off,
                    &format!("member {index} of type id {id}"),
                    member_pos,
                )?;
                members.push(member);
            }
        }

        types.push(TypeRecord {
            offset: pos,
            name_off,
            kind,
            kind_flag,
            vlen,
            size_or_type,
            extra,
        });
        pos = body + trailer_len;
    }

    Ok((types, members))
}

/// Returns the length of the kind-specific data after a type record, or `None` for a kind this
/// reader does not know.
fn trailer_len(kind: u8, vlen: u16) -> Option<usize> {
    let vlen = usize::from(vlen);
    let len = match kind {
        KIND_INT => 4,
        KIND_PTR => 0,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION => vlen * 12,
        KIND_ENUM => vlen * 8,
        KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_FUNC => 0,
        KIND_FUNC_PROTO => vlen * 8,
        KIND_VAR => 4,
        KIND_DATASEC => vlen * 12,
        KIND_FLOAT => 0,
        KIND_DECL_TAG => 4,
        KIND_TYPE_TAG => 0,
        KIND_ENUM64 => vlen * 12,
        _ => return None,
    };
    Some(len)
}

fn is_modifier(kind: u8) -> bool {
    matches!(
        kind,
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
    )
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        0 => "void",
        KIND_INT => "int",
        KIND_PTR => "pointer",
        KIND_ARRAY => "array",
        KIND_STRUCT => "struct",
        KIND_UNION => "union",
        KIND_ENUM => "enum",
        KIND_FWD => "forward declaration",
        KIND_TYPEDEF => "typedef",
        KIND_VOLATILE => "volatile",
        KIND_CONST => "const",
        KIND_RESTRICT => "restrict",
        KIND_FUNC => "function",
        KIND_FUNC_PROTO => "function prototype",
        KIND_VAR => "variable",
        KIND_DATASEC => "data section",
        KIND_FLOAT => "float",
        KIND_DECL_TAG => "decl_tag",
        KIND_TYPE_TAG => "type_tag",
        KIND_ENUM64 => "enum64",
        _ => "unknown kind",
    }
}

/// Returns the NUL-terminated name at `offset` in the string section, or an empty name for an
/// offset that `parse_types` would have rejected.
fn string_at(strings: &[u8], offset: u32) -> &[u8] {
    let tail = strings.get(offset as usize..).unwrap_or(&[]);
    let len = tail
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(tail.len());
    &tail[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Member of a struct or union under construction: name, type id and offset field.
    type MemberSpec<'a> = (&'a str, u32, u32);

    /// Writes small BTF blobs so that each test can describe exactly the layout it checks.
    struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl BtfBuilder {
        fn new() -> Self {
            BtfBuilder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn add_string(&mut self, text: &str) -> u32 {
            if text.is_empty() {
                return 0;
            }
            let offset = self.strings.len() as u32;
            self.strings.extend_from_slice(text.as_bytes());
            self.strings.push(0);
            offset
        }

        fn add_record(
            &mut self,
            name: &str,
            kind: u8,
            kind_flag: bool,
            vlen: u16,
            size_or_type: u32,
            trailer: &[u32],
        ) -> u32 {
            let name_off = self.add_string(name);
            let info = (u32::from(kind) << 24) | u32::from(vlen) | (u32::from(kind_flag) << 31);
            for word in [name_off, info, size_or_type].iter().chain(trailer) {
                self.types.extend_from_slice(&word.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            self.int_bits(name, size, size * 8, 0)
        }

        fn int_bits(&mut self, name: &str, size: u32, bits: u32, bit_shift: u32) -> u32 {
            self.add_record(name, KIND_INT, false, 0, size, &[bits | (bit_shift << 16)])
        }

        fn ptr(&mut self, target: u32) -> u32 {
            self.add_record("", KIND_PTR, false, 0, target, &[])
        }

        fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.add_record(name, KIND_TYPEDEF, false, 0, target, &[])
        }

        fn modifier(&mut self, kind: u8, target: u32) -> u32 {
            self.add_record("", kind, false, 0, target, &[])
        }

        fn composite(
            &mut self,
            kind: u8,
            kind_flag: bool,
            name: &str,
            size: u32,
            members: &[MemberSpec<'_>],
        ) -> u32 {
            let mut trailer = Vec::new();
            for &(member_name, type_id, offset) in members {
                trailer.extend([self.add_string(member_name), type_id, offset]);
            }
            self.add_record(name, kind, kind_flag, members.len() as u16, size, &trailer)
        }

        /// Adds a struct whose member offsets are given in bytes.
        fn struct_bytes(&mut self, name: &str, size: u32, members: &[MemberSpec<'_>]) -> u32 {
            let in_bits: Vec<MemberSpec<'_>> = members
                .iter()
                .map(|&(member_name, type_id, offset)| (member_name, type_id, offset * 8))
                .collect();
            self.composite(KIND_STRUCT, false, name, size, &in_bits)
        }

        fn union_(&mut self, name: &str, size: u32, members: &[MemberSpec<'_>]) -> u32 {
            self.composite(KIND_UNION, false, name, size, members)
        }

        fn build(&self) -> Vec<u8> {
            let mut blob = Vec::new();
            blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            blob.push(BTF_VERSION);
            blob.push(0);
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            for word in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
                blob.extend_from_slice(&word.to_le_bytes());
            }
            blob.extend_from_slice(&self.types);
            blob.extend_from_slice(&self.strings);
            blob
        }
    }

    /// Builds a kernel-like layout: `struct file` with an embedded `struct path`, a
    /// `struct inode` with an anonymous union, and a `struct mm_struct` with an anonymous struct.
    fn kernel_like_btf() -> Vec<u8> {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("unsigned int", 4);
        let u64_id = builder.int("unsigned long", 8);
        let vfsmount = builder.struct_bytes("vfsmount", 8, &[("mnt_flags", u32_id, 0)]);
        let dentry = builder.struct_bytes("dentry", 8, &[("d_flags", u32_id, 0)]);
        let vfsmount_ptr = builder.ptr(vfsmount);
        let dentry_ptr = builder.ptr(dentry);
        let path = builder.struct_bytes(
            "path",
            16,
            &[("mnt", vfsmount_ptr, 0), ("dentry", dentry_ptr, 8)],
        );
        builder.struct_bytes(
            "file",
            64,
            &[
                ("f_mode", u32_id, 0),
                ("f_flags", u32_id, 4),
                ("f_path", path, 16),
            ],
        );

        let nlink_union =
            builder.union_("", 4, &[("i_nlink", u32_id, 0), ("__i_nlink", u32_id, 0)]);
        builder.struct_bytes(
            "inode",
            32,
            &[
                ("i_mode", u32_id, 0),
                ("", nlink_union, 12),
                ("i_size", u64_id, 16),
            ],
        );

        let args = builder.struct_bytes(
            "",
            32,
            &[
                ("arg_start", u64_id, 0),
                ("arg_end", u64_id, 8),
                ("env_start", u64_id, 16),
                ("env_end", u64_id, 24),
            ],
        );
        builder.struct_bytes(
            "mm_struct",
            128,
            &[("mmap_base", u64_id, 0), ("", args, 40)],
        );
        builder.build()
    }

    fn parse_kernel_like() -> Btf {
        Btf::parse(&kernel_like_btf()).expect("kernel-like BTF should parse")
    }

    #[test]
    fn member_offset_plain_member() {
        let btf = parse_kernel_like();

        assert_eq!(btf.member_offset("file", "f_mode").unwrap(), 0);
        assert_eq!(btf.member_offset("file", "f_flags").unwrap(), 4);
        assert_eq!(btf.member_offset("path", "dentry").unwrap(), 8);
    }

    #[test]
    fn member_offset_nested_named_struct() {
        let btf = parse_kernel_like();

        assert_eq!(btf.member_offset("file", "f_path").unwrap(), 16);
        assert_eq!(btf.member_offset("file", "f_path.dentry").unwrap(), 24);
        assert_eq!(btf.member_offset("file", "f_path.mnt").unwrap(), 16);
    }

    #[test]
    fn member_offset_in_anonymous_union() {
        let btf = parse_kernel_like();

        assert_eq!(btf.member_offset("inode", "__i_nlink").unwrap(), 12);
        assert_eq!(btf.member_offset("inode", "i_nlink").unwrap(), 12);
        assert_eq!(btf.member_offset("inode", "i_size").unwrap(), 16);
    }

    #[test]
    fn member_offset_in_anonymous_struct() {
        let btf = parse_kernel_like();

        assert_eq!(btf.member_offset("mm_struct", "arg_start").unwrap(), 40);
        assert_eq!(btf.member_offset("mm_struct", "env_end").unwrap(), 64);
    }

    #[test]
    fn member_offset_nested_anonymous_members() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("unsigned int", 4);
        let inner_struct = builder.struct_bytes("", 8, &[("a", u32_id, 0), ("b", u32_id, 4)]);
        let inner_union = builder.union_("", 8, &[("c", u32_id, 0), ("", inner_struct, 0)]);
        let const_union = builder.modifier(KIND_CONST, inner_union);
        builder.struct_bytes("outer", 24, &[("x", u32_id, 0), ("", const_union, 8)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 12);
    }

    #[test]
    fn member_offset_through_typedef_and_modifiers() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("unsigned int", 4);
        let inner = builder.struct_bytes("inner", 8, &[("lo", u32_id, 0), ("hi", u32_id, 4)]);
        let inner_t = builder.typedef("inner_t", inner);
        let volatile_inner = builder.modifier(KIND_VOLATILE, inner_t);
        let const_inner = builder.modifier(KIND_CONST, volatile_inner);
        let tagged_inner = builder.modifier(KIND_TYPE_TAG, const_inner);
        let restrict_inner = builder.modifier(KIND_RESTRICT, tagged_inner);
        builder.struct_bytes(
            "outer",
            24,
            &[("plain", inner_t, 0), ("qualified", restrict_inner, 8)],
        );
        let btf = Btf::parse(&builder.build()).unwrap();

        assert_eq!(btf.member_offset("outer", "plain.hi").unwrap(), 4);
        assert_eq!(btf.member_offset("outer", "qualified.hi").unwrap(), 12);
    }

    #[test]
    fn member_offset_missing_type() {
        let btf = parse_kernel_like();

        let error = btf.member_offset("no_such_struct", "x").unwrap_err();
        assert!(
            matches!(&error, BtfError::TypeNotFound { name } if name == "no_such_struct"),
            "{error:?}"
        );
    }

    #[test]
    fn member_offset_typedef_name_not_a_struct() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("unsigned int", 4);
        let inner = builder.struct_bytes("inner", 4, &[("a", u32_id, 0)]);
        builder.typedef("inner_t", inner);
        let btf = Btf::parse(&builder.build()).unwrap();

        let error = btf.member_offset("inner_t", "a").unwrap_err();
        assert!(matches!(error, BtfError::TypeNotFound { .. }), "{error:?}");
    }

    #[test]
    fn member_offset_missing_member() {
        let btf = parse_kernel_like();

        let error = btf.member_offset("file", "f_path.dentri").unwrap_err();
        match error {
            BtfError::MemberNotFound {
                type_name,
                path,
                missing,
            } => {
                assert_eq!(type_name, "file");
                assert_eq!(path, "f_path.dentri");
                assert_eq!(missing, "dentri");
            }
            other => panic!("expected MemberNotFound, got {other:?}"),
        }
    }

    #[test]
    fn member_offset_empty_path_component() {
        let btf = parse_kernel_like();

        for path in ["", "f_path.", ".f_path", "f_path..dentry"] {
            let error = btf.member_offset("file", path).unwrap_err();
            assert!(
                matches!(error, BtfError::MemberNotFound { .. }),
                "path {path:?}: {error:?}"
            );
        }
    }

    #[test]
    fn member_offset_through_pointer_rejected() {
        let btf = parse_kernel_like();

        let error = btf
            .member_offset("file", "f_path.dentry.d_flags")
            .unwrap_err();
        match error {
            BtfError::NotStructOrUnion { path, kind, .. } => {
                assert_eq!(path, "f_path.dentry");
                assert_eq!(kind, "pointer");
            }
            other => panic!("expected NotStructOrUnion, got {other:?}"),
        }
    }

    #[test]
    fn member_offset_rejects_bitfields() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("unsigned int", 4);
        let narrow_int = builder.int_bits("unsigned int", 4, 3, 0);
        // With kind_flag set, bits 24-31 hold the bitfield size.
        builder.composite(
            KIND_STRUCT,
            true,
            "flagged",
            8,
            &[("whole", u32_id, 0), ("bits", u32_id, (3 << 24) | 32)],
        );
        builder.composite(
            KIND_STRUCT,
            false,
            "unaligned",
            8,
            &[("whole", u32_id, 0), ("bits", u32_id, 35)],
        );
        builder.composite(
            KIND_STRUCT,
            false,
            "narrow_int",
            8,
            &[("whole", u32_id, 0), ("bits", narrow_int, 32)],
        );
        let btf = Btf::parse(&builder.build()).unwrap();

        for type_name in ["flagged", "unaligned", "narrow_int"] {
            assert_eq!(btf.member_offset(type_name, "whole").unwrap(), 0);
            let error = btf.member_offset(type_name, "bits").unwrap_err();
            assert!(
                matches!(&error, BtfError::Bitfield { path, .. } if path == "bits"),
                "{type_name}: {error:?}"
            );
        }
    }

    #[test]
    fn member_offset_kind_flag_without_bitfield() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("unsigned int", 4);
        builder.composite(KIND_STRUCT, true, "flagged", 8, &[("second", u32_id, 32)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        assert_eq!(btf.member_offset("flagged", "second").unwrap(), 4);
    }

    #[test]
    fn member_offset_survives_anonymous_cycle() {
        let mut builder = BtfBuilder::new();
        // Type 1 is an anonymous struct whose only member is itself. No C type has this
        // layout, but a corrupt file may, and the search must stop instead of looping.
        builder.struct_bytes("", 4, &[("", 1, 0)]);
        builder.struct_bytes("outer", 4, &[("", 1, 0)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        let error = btf.member_offset("outer", "missing").unwrap_err();
        assert!(
            matches!(error, BtfError::MemberNotFound { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn member_offset_typedef_cycle_is_malformed() {
        let mut builder = BtfBuilder::new();
        // Types 1 and 2 are typedefs of each other.
        builder.typedef("a_t", 2);
        builder.typedef("b_t", 1);
        builder.struct_bytes("outer", 4, &[("looped", 1, 0)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        let error = btf.member_offset("outer", "looped.x").unwrap_err();
        assert!(matches!(error, BtfError::Malformed { .. }), "{error:?}");
    }

    #[test]
    fn member_offset_out_of_range_type_id() {
        let mut builder = BtfBuilder::new();
        builder.struct_bytes("outer", 4, &[("dangling", 99, 0)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        let error = btf.member_offset("outer", "dangling.x").unwrap_err();
        match error {
            BtfError::Malformed { reason, offset, .. } => {
                assert!(reason.contains("99"), "{reason}");
                assert_eq!(offset, HEADER_LEN, "offset of the `outer` record");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn struct_size_named_struct() {
        let btf = parse_kernel_like();

        assert_eq!(btf.struct_size("file").unwrap(), 64);
        assert_eq!(btf.struct_size("path").unwrap(), 16);
        let error = btf.struct_size("unsigned int").unwrap_err();
        assert!(matches!(error, BtfError::TypeNotFound { .. }), "{error:?}");
    }

    #[test]
    fn struct_size_prefers_sized_definition() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("int", 4);
        builder.add_record("upid", KIND_FWD, false, 0, 0, &[]);
        builder.struct_bytes("upid", 0, &[]);
        builder.struct_bytes("upid", 16, &[("nr", u32_id, 0), ("ns", u32_id, 8)]);
        builder.struct_bytes("upid", 24, &[("nr", u32_id, 4)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        assert_eq!(btf.struct_size("upid").unwrap(), 16);
        assert_eq!(btf.member_offset("upid", "ns").unwrap(), 8);
    }

    #[test]
    fn struct_size_finds_union() {
        let mut builder = BtfBuilder::new();
        let u32_id = builder.int("int", 4);
        builder.union_("either", 4, &[("a", u32_id, 0), ("b", u32_id, 0)]);
        let btf = Btf::parse(&builder.build()).unwrap();

        assert_eq!(btf.struct_size("either").unwrap(), 4);
        assert_eq!(btf.member_offset("either", "b").unwrap(), 0);
    }

    #[test]
    fn parse_skips_every_kind_trailer() {
        let mut builder = BtfBuilder::new();
        let int_id = builder.int("int", 4);
        builder.ptr(int_id);
        builder.add_record("", KIND_ARRAY, false, 0, 0, &[int_id, int_id, 4]);
        builder.union_("u", 4, &[("a", int_id, 0)]);
        builder.add_record("e", KIND_ENUM, false, 2, 4, &[0, 0, 0, 1]);
        builder.add_record("fwd", KIND_FWD, false, 0, 0, &[]);
        builder.typedef("int_t", int_id);
        builder.modifier(KIND_VOLATILE, int_id);
        builder.modifier(KIND_CONST, int_id);
        builder.modifier(KIND_RESTRICT, int_id);
        let proto = builder.add_record(
            "",
            KIND_FUNC_PROTO,
            false,
            2,
            int_id,
            &[0, int_id, 0, int_id],
        );
        builder.add_record("f", KIND_FUNC, false, 0, proto, &[]);
        let var = builder.add_record("v", KIND_VAR, false, 0, int_id, &[1]);
        builder.add_record(".data", KIND_DATASEC, false, 1, 4, &[var, 0, 4]);
        builder.add_record("double", KIND_FLOAT, false, 0, 8, &[]);
        builder.add_record("tag", KIND_DECL_TAG, false, 0, var, &[u32::MAX]);
        builder.modifier(KIND_TYPE_TAG, int_id);
        builder.add_record("e64", KIND_ENUM64, false, 2, 8, &[0, 0, 0, 0, 1, 0]);
        let last = builder.struct_bytes("last", 12, &[("x", int_id, 0), ("y", int_id, 8)]);
        let bytes = builder.build();
        let btf = Btf::parse(&bytes).unwrap();

        assert_eq!(last, 19, "builder should have written one type per kind");
        assert_eq!(btf.types.len(), 19);
        assert_eq!(btf.member_offset("last", "y").unwrap(), 8);
        assert_eq!(btf.member_offset("u", "a").unwrap(), 0);
    }

    #[test]
    fn parse_rejects_unknown_kind() {
        let mut builder = BtfBuilder::new();
        builder.int("int", 4);
        builder.add_record("mystery", 31, false, 0, 0, &[]);
        let bytes = builder.build();

        let error = Btf::parse(&bytes).unwrap_err();
        match error {
            BtfError::Malformed { reason, offset, .. } => {
                assert!(reason.contains("unknown kind 31"), "{reason}");
                assert_eq!(offset, HEADER_LEN + 16, "offset of the second record");
            }
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn parse_rejects_bad_magic() {
        let mut bytes = kernel_like_btf();
        bytes[0] = 0x00;

        let error = Btf::parse(&bytes).unwrap_err();
        assert!(
            matches!(&error, BtfError::Malformed { reason, offset: 0, .. } if reason.contains("magic")),
            "{error:?}"
        );
    }

    #[test]
    fn parse_rejects_big_endian() {
        let mut bytes = kernel_like_btf();
        bytes[..2].copy_from_slice(&BTF_MAGIC.to_be_bytes());

        let error = Btf::parse(&bytes).unwrap_err();
        assert!(
            matches!(&error, BtfError::Malformed { reason, .. } if reason.contains("big-endian")),
            "{error:?}"
        );
    }

    #[test]
    fn parse_rejects_unsupported_version() {
        let mut bytes = kernel_like_btf();
        bytes[2] = 2;

        let error = Btf::parse(&bytes).unwrap_err();
        assert!(
            matches!(&error, BtfError::Malformed { offset: 2, .. }),
            "{error:?}"
        );
    }

    #[test]
    fn parse_rejects_truncated_header() {
        for len in [0, 1, 4, HEADER_LEN - 1] {
            let bytes = &kernel_like_btf()[..len];

            let error = Btf::parse(bytes).unwrap_err();
            assert!(
                matches!(&error, BtfError::Malformed { reason, .. } if reason.contains("truncated")),
                "length {len}: {error:?}"
            );
        }
    }

    #[test]
    fn parse_rejects_name_offset_past_strings() {
        let mut builder = BtfBuilder::new();
        builder.add_record("", KIND_INT, false, 0, 4, &[32]);
        let mut bytes = builder.build();
        bytes[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&1000u32.to_le_bytes());

        let error = Btf::parse(&bytes).unwrap_err();
        assert!(
            matches!(&error, BtfError::Malformed { reason, .. } if reason.contains("1000")),
            "{error:?}"
        );
    }

    #[test]
    fn parse_truncated_at_every_length() {
        let bytes = kernel_like_btf();

        for len in 0..bytes.len() {
            let result = Btf::parse(&bytes[..len]);
            assert!(result.is_err(), "length {len} of {} parsed", bytes.len());
        }
        assert!(Btf::parse(&bytes).is_ok());
    }

    #[test]
    fn parse_and_lookup_survive_corruption() {
        let original = kernel_like_btf();
        // A fixed linear congruential generator keeps the corruption reproducible.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };

        for _ in 0..20_000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let index = next() % bytes.len();
                bytes[index] = next() as u8;
            }

            if let Ok(btf) = Btf::parse(&bytes) {
                let _ = btf.member_offset("file", "f_path.dentry");
                let _ = btf.member_offset("inode", "__i_nlink");
                let _ = btf.member_offset("mm_struct", "arg_start");
                let _ = btf.struct_size("path");
            }
        }
    }

    #[test]
    fn from_file_names_missing_path() {
        let path = Path::new("/nonexistent/btf/vmlinux");

        let error = Btf::from_file(path).unwrap_err();
        assert!(matches!(error, BtfError::Io { .. }), "{error:?}");
        assert!(
            error.to_string().contains("/nonexistent/btf/vmlinux"),
            "{error}"
        );
    }

    #[test]
    fn from_file_names_path_in_invalid_data() {
        let path = std::env::temp_dir().join(format!("btf-invalid-{}.bin", std::process::id()));
        std::fs::write(&path, b"not BTF data at all, just text").unwrap();

        let result = Btf::from_file(&path);
        std::fs::remove_file(&path).unwrap();
        let error = result.unwrap_err();
        assert!(matches!(error, BtfError::Malformed { .. }), "{error:?}");
        assert!(
            error.to_string().contains(&*path.to_string_lossy()),
            "{error}"
        );
    }

    #[test]
    fn vmlinux_resolves_sensor_offsets() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            eprintln!("skipping: {} does not exist on this kernel", path.display());
            return;
        }
        let btf = Btf::from_file(path).unwrap();

        let cases = [
            ("task_struct", "start_boottime"),
            ("mm_struct", "arg_start"),
            ("mm_struct", "arg_end"),
            ("file", "f_path.dentry"),
            ("inode", "__i_nlink"),
        ];
        for (type_name, member) in cases {
            let offset = btf.member_offset(type_name, member).unwrap();
            let size = btf.struct_size(type_name).unwrap();
            assert!(
                offset < size,
                "{type_name}.{member} at {offset} of {size} bytes"
            );
            eprintln!("{type_name}.{member} = {offset} (size {size})");
        }

        let f_path = btf.member_offset("file", "f_path").unwrap();
        let dentry = btf.member_offset("path", "dentry").unwrap();
        assert_eq!(
            btf.member_offset("file", "f_path.dentry").unwrap(),
            f_path + dentry
        );
        let arg_start = btf.member_offset("mm_struct", "arg_start").unwrap();
        let arg_end = btf.member_offset("mm_struct", "arg_end").unwrap();
        assert_eq!(arg_end, arg_start + 8, "arg_end follows arg_start");
        // `sched_reset_on_fork` is a 1-bit field of `task_struct`, checked on Linux 6.18.
        let error = btf
            .member_offset("task_struct", "sched_reset_on_fork")
            .unwrap_err();
        assert!(matches!(error, BtfError::Bitfield { .. }), "{error:?}");
        // `struct upid` is an int followed by a pointer, padded to pointer alignment.
        assert_eq!(
            btf.struct_size("upid").unwrap() as usize,
            2 * size_of::<usize>()
        );
    }
}
