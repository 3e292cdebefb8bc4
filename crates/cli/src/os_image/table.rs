//! Partition tables, parsed from bytes: the MBR at LBA 0 and, behind a
//! protective MBR, the GPT whose header is at LBA 1 (512- or 4096-byte
//! sectors). Nothing here does IO; [`super::inspect`] reads the bytes.

/// Where the MBR's boot signature is, and what it must be.
const MBR_SIGNATURE_OFFSET: usize = 510;
const MBR_SIGNATURE: [u8; 2] = [0x55, 0xAA];
/// The MBR partition type of a protective MBR, which says "read the GPT".
const MBR_TYPE_GPT_PROTECTIVE: u8 = 0xEE;
/// The MBR partition types of extended partitions, whose logical
/// partitions tether does not read (OS images do not use them).
const MBR_TYPES_EXTENDED: [u8; 3] = [0x05, 0x0F, 0x85];
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// The smallest GPT header (UEFI 2.x) and the entry size every tool writes.
const GPT_HEADER_MIN: usize = 92;
const GPT_ENTRY_MIN: usize = 128;
/// More entries than any tool makes (128 is the norm): a bound on what a
/// damaged header can make us read.
const GPT_MAX_ENTRIES: u32 = 1024;

/// Which table a partition came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Mbr,
    Gpt,
}

/// One partition: its number as `fdisk -l` shows it (from 1), its byte
/// range in the image, and what the table says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub offset: u64,
    pub len: u64,
    /// The GPT partition name (empty for an MBR partition).
    pub name: String,
    /// The MBR partition type byte (`None` for a GPT partition).
    pub mbr_type: Option<u8>,
}

/// Why the first sectors are not a partition table tether can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "it is not a disk image: it is shorter than one sector, or has no MBR boot signature (55 AA at byte 510)"
    )]
    NoMbr,
    #[error("its protective MBR announces a GPT, but there is no valid GPT header at LBA 1: {0}")]
    BadGpt(String),
    #[error("its MBR has no partitions")]
    Empty,
}

/// The partitions of an image whose first sectors are `head` (at least
/// 512 bytes; reads through `read` for the GPT's header and entries, given
/// an offset and a length). `image_len` bounds every partition.
pub fn parse(
    head: &[u8],
    image_len: u64,
    mut read: impl FnMut(u64, usize) -> std::io::Result<Vec<u8>>,
) -> Result<(TableKind, Vec<Partition>), TableError> {
    let mbr = parse_mbr(head)?;
    if mbr
        .iter()
        .any(|p| p.mbr_type == Some(MBR_TYPE_GPT_PROTECTIVE))
    {
        let mut problems = Vec::new();
        for sector_size in [512_u64, 4096] {
            let header = match read(sector_size, GPT_HEADER_MIN.max(512)) {
                Ok(bytes) => bytes,
                Err(err) => {
                    problems.push(format!("{sector_size}-byte sectors: {err}"));
                    continue;
                }
            };
            match parse_gpt_header(&header, sector_size) {
                Ok(header) => {
                    // The header is the image's word: an LBA past any
                    // disk is refused, not wrapped (or a panic).
                    let entries_at =
                        header.entries_lba.checked_mul(sector_size).ok_or_else(|| {
                            TableError::BadGpt(format!(
                                "its partition entries are at LBA {}, past any disk",
                                header.entries_lba
                            ))
                        })?;
                    let bytes = read(entries_at, header.entries as usize * header.entry_size)
                        .map_err(|err| {
                            TableError::BadGpt(format!("cannot read the partition entries: {err}"))
                        })?;
                    let partitions = parse_gpt_entries(&bytes, &header, image_len)?;
                    return Ok((TableKind::Gpt, partitions));
                }
                Err(problem) => problems.push(format!("{sector_size}-byte sectors: {problem}")),
            }
        }
        return Err(TableError::BadGpt(problems.join("; ")));
    }
    let partitions: Vec<_> = mbr
        .into_iter()
        .filter(|p| !MBR_TYPES_EXTENDED.contains(&p.mbr_type.unwrap_or_default()))
        .filter(|p| p.offset < image_len)
        .map(|mut p| {
            p.len = p.len.min(image_len - p.offset);
            p
        })
        .collect();
    if partitions.is_empty() {
        return Err(TableError::Empty);
    }
    Ok((TableKind::Mbr, partitions))
}

/// The four primary entries of an MBR (512-byte sectors), empty ones left
/// out.
fn parse_mbr(sector: &[u8]) -> Result<Vec<Partition>, TableError> {
    if sector.len() < 512 || sector[MBR_SIGNATURE_OFFSET..512] != MBR_SIGNATURE {
        return Err(TableError::NoMbr);
    }
    Ok((0..4)
        .filter_map(|i| {
            let entry = &sector[446 + 16 * i..446 + 16 * (i + 1)];
            let kind = entry[4];
            let start = u64::from(u32_le(&entry[8..12]));
            let sectors = u64::from(u32_le(&entry[12..16]));
            (kind != 0 && sectors != 0).then(|| Partition {
                number: i as u32 + 1,
                offset: start * 512,
                len: sectors * 512,
                name: String::new(),
                mbr_type: Some(kind),
            })
        })
        .collect())
}

/// The fields of a GPT header that locate its partition entries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GptHeader {
    sector_size: u64,
    entries_lba: u64,
    entries: u32,
    entry_size: usize,
    entries_crc: u32,
}

fn parse_gpt_header(bytes: &[u8], sector_size: u64) -> Result<GptHeader, String> {
    if bytes.len() < GPT_HEADER_MIN || &bytes[..8] != GPT_SIGNATURE {
        return Err("no \"EFI PART\" signature".into());
    }
    let header_size = u32_le(&bytes[12..16]) as usize;
    if !(GPT_HEADER_MIN..=bytes.len()).contains(&header_size) {
        return Err(format!("header size {header_size} is out of range"));
    }
    let mut zeroed = bytes[..header_size].to_vec();
    zeroed[16..20].fill(0);
    let stored = u32_le(&bytes[16..20]);
    let computed = crc32fast::hash(&zeroed);
    if stored != computed {
        return Err(format!(
            "header CRC32 is {stored:08x}, the header's bytes give {computed:08x}"
        ));
    }
    let header = GptHeader {
        sector_size,
        entries_lba: u64_le(&bytes[72..80]),
        entries: u32_le(&bytes[80..84]),
        entry_size: u32_le(&bytes[84..88]) as usize,
        entries_crc: u32_le(&bytes[88..92]),
    };
    if header.entries > GPT_MAX_ENTRIES
        || header.entry_size < GPT_ENTRY_MIN
        || header.entry_size > 4096
        || !header.entry_size.is_multiple_of(8)
    {
        return Err(format!(
            "{} entries of {} bytes is not a table tether reads",
            header.entries, header.entry_size
        ));
    }
    Ok(header)
}

fn parse_gpt_entries(
    bytes: &[u8],
    header: &GptHeader,
    image_len: u64,
) -> Result<Vec<Partition>, TableError> {
    let computed = crc32fast::hash(bytes);
    if computed != header.entries_crc {
        return Err(TableError::BadGpt(format!(
            "the partition entries' CRC32 is {:08x} in the header, the entries give {computed:08x}",
            header.entries_crc
        )));
    }
    let mut partitions = Vec::new();
    for (i, entry) in bytes.chunks_exact(header.entry_size).enumerate() {
        if entry[..16].iter().all(|b| *b == 0) {
            continue; // an unused entry: its type GUID is zero
        }
        let first = u64_le(&entry[32..40]);
        let last = u64_le(&entry[40..48]);
        let range = first
            .checked_mul(header.sector_size)
            .zip(
                last.checked_add(1)
                    .and_then(|end| end.checked_mul(header.sector_size)),
            )
            .filter(|(start, end)| start < end && *end <= image_len);
        let Some((start, end)) = range else {
            return Err(TableError::BadGpt(format!(
                "partition {} spans LBA {first}..={last}, outside the image's {image_len} bytes",
                i + 1
            )));
        };
        let units: Vec<u16> = entry[56..128]
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .take_while(|unit| *unit != 0)
            .collect();
        partitions.push(Partition {
            number: i as u32 + 1,
            offset: start,
            len: end - start,
            name: String::from_utf16_lossy(&units),
            mbr_type: None,
        });
    }
    Ok(partitions)
}

fn u32_le(bytes: &[u8]) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(word)
}

fn u64_le(bytes: &[u8]) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use tether_testkit::disk_image as build;

    use super::*;

    fn parse_bytes(disk: &[u8]) -> Result<(TableKind, Vec<Partition>), TableError> {
        parse(&disk[..512], disk.len() as u64, |offset, len| {
            let start = offset as usize;
            disk.get(start..start + len)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
        })
    }

    #[test]
    fn a_gpt_gives_names_and_byte_ranges() {
        let disk = build::gpt(200, &[("EDGELQ_BOOT", 40, 99), ("EDGELQ_DATA", 100, 150)]);
        let (kind, parts) = parse_bytes(&disk).expect("a valid GPT");
        assert_eq!(kind, TableKind::Gpt);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "EDGELQ_BOOT");
        assert_eq!((parts[0].offset, parts[0].len), (40 * 512, 60 * 512));
        assert_eq!(
            (parts[1].number, parts[1].name.as_str()),
            (2, "EDGELQ_DATA")
        );
    }

    #[test]
    fn a_damaged_gpt_is_refused_by_its_crc() {
        let mut disk = build::gpt(200, &[("EDGELQ_BOOT", 40, 99)]);
        disk[512 + 40] ^= 1; // inside the header: last usable LBA
        let err = parse_bytes(&disk).expect_err("header CRC");
        assert!(err.to_string().contains("header CRC32"), "{err}");

        let mut disk = build::gpt(200, &[("EDGELQ_BOOT", 40, 99)]);
        disk[1024 + 60] ^= 1; // inside the first entry's name
        let err = parse_bytes(&disk).expect_err("entries CRC");
        assert!(
            err.to_string().contains("partition entries' CRC32"),
            "{err}"
        );
    }

    #[test]
    fn a_gpt_whose_entries_lie_past_any_disk_is_refused() {
        let mut disk = build::gpt(200, &[("EDGELQ_BOOT", 40, 99)]);
        let header = 512..512 + 92;
        disk[512 + 72..512 + 80].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        disk[512 + 16..512 + 20].fill(0);
        let crc = crc32fast::hash(&disk[header]);
        disk[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        let err = parse_bytes(&disk).expect_err("entries past any disk");
        assert!(err.to_string().contains("past any disk"), "{err}");
    }

    #[test]
    fn a_gpt_partition_past_the_image_is_refused() {
        let disk = build::gpt(200, &[("EDGELQ_BOOT", 40, 400)]);
        let err = parse_bytes(&disk).expect_err("past the end");
        assert!(err.to_string().contains("outside the image"), "{err}");
    }

    #[test]
    fn an_mbr_gives_types_and_skips_empty_and_extended_entries() {
        let disk = build::mbr(300, &[(0x0C, 8, 100), (0x05, 108, 50), (0x83, 158, 100)]);
        let (kind, parts) = parse_bytes(&disk).expect("a valid MBR");
        assert_eq!(kind, TableKind::Mbr);
        let summary: Vec<_> = parts
            .iter()
            .map(|p| (p.number, p.mbr_type, p.offset, p.len))
            .collect();
        assert_eq!(
            summary,
            [
                (1, Some(0x0C), 8 * 512, 100 * 512),
                (3, Some(0x83), 158 * 512, 100 * 512)
            ]
        );
    }

    #[test]
    fn no_signature_is_not_a_disk_image() {
        assert_eq!(parse_bytes(&[0; 1024]), Err(TableError::NoMbr));
        assert_eq!(
            parse(&[0x55; 100], 100, |_, _| Ok(Vec::new())),
            Err(TableError::NoMbr)
        );
        assert_eq!(parse_bytes(&build::mbr(10, &[])), Err(TableError::Empty));
    }
}
