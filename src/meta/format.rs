//! On-disk encoding of a metadata checkpoint: the whole metadata cache as one blob, written
//! into metadata-reserve buckets at a clean unmount and named by a `MetaCheckpoint` journal
//! record (docs/DESIGN.md §3). Little-endian, no padding:
//!
//! ```text
//! header (48 bytes)
//!  0  8 magic "bcfsmeta"        24  8 root_ino (the backing root's inode number)
//!  8  4 version (2)             32  4 ninodes
//! 12  4 crc32c (whole blob,     36  4 ndirs
//!       crc field zero)         40  4 flags: bit 0 clean (written at a clean unmount after
//! 16  8 len (whole blob)              a syncfs of the backing); other bits zero
//!                               44  4 reserved, zero
//! inode x ninodes
//!   id u64, ino u64, mode u32, uid u32, gid u32, nlink u64, size i64, blocks i64, rdev u64,
//!   blksize i64, atime (s i64, ns i64), mtime (s, ns), ctime (s, ns),
//!   handle_type i32, handle_len u16 (0: none, <= 128), handle bytes,
//!   link_len u16 (0: none, <= 4095), link bytes
//! dir x ndirs
//!   id u64, mtime (s i64, ns i64), ctime (s i64, ns i64), nnames u32,
//!   name x nnames: name_len u16 (1..=255), name, kind u8 (0 absent, 1 child, 2 listed),
//!                  child u64
//!   listed u8 (0/1), nentries u32,
//!   entry x nentries: name_len u16 (1..=255), name, backing_ino u64, d_type u8
//! ```
//!
//! Decoding never panics and never allocates more than the blob's own length allows: every
//! count is checked against the bytes left before anything is reserved.

use crate::error::{Error, Result};

pub const META_MAGIC: [u8; 8] = *b"bcfsmeta";
pub const META_VERSION: u32 = 2;
pub const META_HDR: usize = 48;
/// Header flag: written at a clean unmount, after a syncfs of the backing (a periodic
/// snapshot taken while the mount runs has it clear).
pub const FLAG_CLEAN: u32 = 1;
pub const MAX_HANDLE: usize = 128;
pub const MAX_LINK: usize = 4095;
pub const MAX_NAME: usize = 255;
/// The fixed part of an inode (no handle, no link): 2 x u64, 3 x u32, 5 x 8-byte fields,
/// 3 timestamps of 16 bytes, handle_type i32, handle_len u16, link_len u16.
pub const MIN_INODE: usize = 16 + 12 + 40 + 48 + 4 + 2 + 2;
/// The fixed part of a directory: id, two timestamps, nnames, listed, nentries.
pub const MIN_DIR: usize = 8 + 32 + 4 + 1 + 4;

/// One inode as the checkpoint carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InodeRec {
    pub id: u64,
    pub ino: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: i64,
    pub blocks: i64,
    pub rdev: u64,
    pub blksize: i64,
    pub times: [(i64, i64); 3],
    pub handle: Option<(i32, Vec<u8>)>,
    pub link: Option<Vec<u8>>,
}

/// What a name is, as the checkpoint carries it (0 absent, 1 child, 2 listed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRec {
    pub name: Vec<u8>,
    pub kind: u8,
    pub child: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRec {
    pub id: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub names: Vec<NameRec>,
    pub listing: Option<Vec<(Vec<u8>, u64, u8)>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub root_ino: u64,
    /// Written at a clean unmount after a syncfs of the backing ([`FLAG_CLEAN`]).
    pub clean: bool,
    pub inodes: Vec<InodeRec>,
    pub dirs: Vec<DirRec>,
}

fn put_name(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name);
}

impl Checkpoint {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; META_HDR];
        for i in &self.inodes {
            for v in [i.id, i.ino] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            for v in [i.mode, i.uid, i.gid] {
                b.extend_from_slice(&v.to_le_bytes());
            }
            b.extend_from_slice(&i.nlink.to_le_bytes());
            b.extend_from_slice(&i.size.to_le_bytes());
            b.extend_from_slice(&i.blocks.to_le_bytes());
            b.extend_from_slice(&i.rdev.to_le_bytes());
            b.extend_from_slice(&i.blksize.to_le_bytes());
            for (s, ns) in i.times {
                b.extend_from_slice(&s.to_le_bytes());
                b.extend_from_slice(&ns.to_le_bytes());
            }
            match &i.handle {
                Some((t, h)) if h.len() <= MAX_HANDLE && !h.is_empty() => {
                    b.extend_from_slice(&t.to_le_bytes());
                    put_name(&mut b, h);
                }
                _ => {
                    b.extend_from_slice(&0i32.to_le_bytes());
                    b.extend_from_slice(&0u16.to_le_bytes());
                }
            }
            match &i.link {
                Some(l) if l.len() <= MAX_LINK && !l.is_empty() => put_name(&mut b, l),
                _ => b.extend_from_slice(&0u16.to_le_bytes()),
            }
        }
        for d in &self.dirs {
            b.extend_from_slice(&d.id.to_le_bytes());
            for (s, ns) in [d.mtime, d.ctime] {
                b.extend_from_slice(&s.to_le_bytes());
                b.extend_from_slice(&ns.to_le_bytes());
            }
            let names: Vec<&NameRec> = d
                .names
                .iter()
                .filter(|n| (1..=MAX_NAME).contains(&n.name.len()))
                .collect();
            b.extend_from_slice(&(names.len() as u32).to_le_bytes());
            for n in names {
                put_name(&mut b, &n.name);
                b.push(n.kind);
                b.extend_from_slice(&n.child.to_le_bytes());
            }
            // a listing with a name that cannot be encoded is not kept (it would be incomplete)
            let listing = d
                .listing
                .as_ref()
                .filter(|l| l.iter().all(|(n, _, _)| (1..=MAX_NAME).contains(&n.len())));
            match listing {
                Some(l) => {
                    b.push(1);
                    b.extend_from_slice(&(l.len() as u32).to_le_bytes());
                    for (name, ino, t) in l {
                        put_name(&mut b, name);
                        b.extend_from_slice(&ino.to_le_bytes());
                        b.push(*t);
                    }
                }
                None => {
                    b.push(0);
                    b.extend_from_slice(&0u32.to_le_bytes());
                }
            }
        }
        let len = b.len() as u64;
        b[0..8].copy_from_slice(&META_MAGIC);
        b[8..12].copy_from_slice(&META_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&len.to_le_bytes());
        b[24..32].copy_from_slice(&self.root_ino.to_le_bytes());
        b[32..36].copy_from_slice(&(self.inodes.len() as u32).to_le_bytes());
        b[36..40].copy_from_slice(&(self.dirs.len() as u32).to_le_bytes());
        let flags = if self.clean { FLAG_CLEAN } else { 0 };
        b[40..44].copy_from_slice(&flags.to_le_bytes());
        let crc = blob_crc(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Checkpoint> {
        let bad = |why: &str| Error::corrupt("metadata checkpoint", why.to_string());
        if b.len() < META_HDR || b[0..8] != META_MAGIC {
            return Err(bad("no metadata checkpoint header"));
        }
        let mut r = Reader { b, pos: 8 };
        if r.u32()? != META_VERSION {
            return Err(bad("unknown version"));
        }
        let crc = r.u32()?;
        let len = r.u64()?;
        if len != b.len() as u64 {
            return Err(bad("length does not match"));
        }
        if blob_crc(b) != crc {
            return Err(bad("crc mismatch"));
        }
        let root_ino = r.u64()?;
        let ninodes = r.u32()? as usize;
        let ndirs = r.u32()? as usize;
        let flags = r.u32()?;
        if flags & !FLAG_CLEAN != 0 || r.u32()? != 0 {
            return Err(bad("unknown flags"));
        }
        // every inode and directory takes at least its fixed part: the counts must fit
        let least = ninodes as u64 * MIN_INODE as u64 + ndirs as u64 * MIN_DIR as u64;
        if least > r.left() as u64 {
            return Err(bad("counts larger than the blob"));
        }
        let mut inodes = Vec::with_capacity(ninodes);
        for _ in 0..ninodes {
            let id = r.u64()?;
            let ino = r.u64()?;
            let (mode, uid, gid) = (r.u32()?, r.u32()?, r.u32()?);
            let nlink = r.u64()?;
            let size = r.i64()?;
            let blocks = r.i64()?;
            let rdev = r.u64()?;
            let blksize = r.i64()?;
            let mut times = [(0, 0); 3];
            for t in &mut times {
                *t = (r.i64()?, r.i64()?);
            }
            let htype = r.i32()?;
            let handle = r.bytes(MAX_HANDLE)?;
            let link = r.bytes(MAX_LINK)?;
            inodes.push(InodeRec {
                id,
                ino,
                mode,
                uid,
                gid,
                nlink,
                size,
                blocks,
                rdev,
                blksize,
                times,
                handle: (!handle.is_empty()).then_some((htype, handle)),
                link: (!link.is_empty()).then_some(link),
            });
        }
        let mut dirs = Vec::with_capacity(ndirs);
        for _ in 0..ndirs {
            let id = r.u64()?;
            let mtime = (r.i64()?, r.i64()?);
            let ctime = (r.i64()?, r.i64()?);
            let nnames = r.u32()? as usize;
            if nnames > r.left() / 12 {
                return Err(bad("name count larger than the blob"));
            }
            let mut names = Vec::with_capacity(nnames);
            for _ in 0..nnames {
                let name = r.name()?;
                let kind = r.u8()?;
                if kind > 2 {
                    return Err(bad("unknown name kind"));
                }
                let child = r.u64()?;
                names.push(NameRec { name, kind, child });
            }
            let listed = r.u8()?;
            let nentries = r.u32()? as usize;
            if listed > 1 || (listed == 0 && nentries != 0) || nentries > r.left() / 12 {
                return Err(bad("bad listing header"));
            }
            let listing = if listed == 1 {
                let mut l = Vec::with_capacity(nentries);
                for _ in 0..nentries {
                    let name = r.name()?;
                    let ino = r.u64()?;
                    let t = r.u8()?;
                    l.push((name, ino, t));
                }
                Some(l)
            } else {
                None
            };
            dirs.push(DirRec {
                id,
                mtime,
                ctime,
                names,
                listing,
            });
        }
        if r.left() != 0 {
            return Err(bad("trailing bytes"));
        }
        Ok(Checkpoint {
            root_ino,
            clean: flags & FLAG_CLEAN != 0,
            inodes,
            dirs,
        })
    }
}

/// crc32c of the blob with its crc field taken as zero.
fn blob_crc(b: &[u8]) -> u32 {
    let c = crc32c::crc32c(&b[..12]);
    let c = crc32c::crc32c_append(c, &[0; 4]);
    crc32c::crc32c_append(c, &b[16..])
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn left(&self) -> usize {
        self.b.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        if n > self.left() {
            return Err(Error::corrupt("metadata checkpoint", "truncated"));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn i32(&mut self) -> Result<i32> {
        Ok(self.u32()? as i32)
    }

    fn u64(&mut self) -> Result<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn i64(&mut self) -> Result<i64> {
        Ok(self.u64()? as i64)
    }

    /// A u16 length (at most `max`) and that many bytes.
    fn bytes(&mut self, max: usize) -> Result<Vec<u8>> {
        let n = self.u16()? as usize;
        if n > max {
            return Err(Error::corrupt("metadata checkpoint", "field too long"));
        }
        Ok(self.take(n)?.to_vec())
    }

    /// A name: 1..=255 bytes, no '/' or NUL.
    fn name(&mut self) -> Result<Vec<u8>> {
        let n = self.bytes(MAX_NAME)?;
        if n.is_empty() || n.iter().any(|&c| c == b'/' || c == 0) {
            return Err(Error::corrupt("metadata checkpoint", "bad name"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Checkpoint {
        Checkpoint {
            root_ino: 2,
            clean: true,
            inodes: vec![InodeRec {
                id: 12,
                ino: 12,
                mode: 0o120777,
                uid: 1,
                gid: 2,
                nlink: 1,
                size: 3,
                blocks: 0,
                rdev: 0,
                blksize: 4096,
                times: [(1, 2), (3, 4), (5, 6)],
                handle: Some((1, vec![9; 8])),
                link: Some(b"abc".to_vec()),
            }],
            dirs: vec![DirRec {
                id: 1,
                mtime: (7, 8),
                ctime: (9, 10),
                names: vec![
                    NameRec {
                        name: b"x".to_vec(),
                        kind: 1,
                        child: 12,
                    },
                    NameRec {
                        name: b"gone".to_vec(),
                        kind: 0,
                        child: 0,
                    },
                ],
                listing: Some(vec![(b".".to_vec(), 2, 4), (b"x".to_vec(), 12, 10)]),
            }],
        }
    }

    #[test]
    fn round_trips() {
        let c = sample();
        assert_eq!(Checkpoint::decode(&c.encode()).unwrap(), c);
    }

    #[test]
    fn every_truncation_and_bit_flip_is_an_error_never_a_panic() {
        let b = sample().encode();
        for n in 0..b.len() {
            assert!(Checkpoint::decode(&b[..n]).is_err(), "truncated at {n}");
        }
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut c = b.clone();
                c[i] ^= 1 << bit;
                // the crc covers the body, the header fields are checked: always refused
                assert!(Checkpoint::decode(&c).is_err(), "flip {i}.{bit}");
            }
        }
    }

    /// Inodes without a handle or a link are the smallest a checkpoint carries: a blob of
    /// nothing else must decode (a bound on the counts that guessed the sizes refused them).
    #[test]
    fn a_blob_of_only_smallest_inodes_and_directories_round_trips() {
        let inode = |id| {
            InodeRec {
                handle: None,
                link: None,
                ..sample().inodes[0].clone()
            }
            .with_id(id)
        };
        let dir = |id| DirRec {
            id,
            mtime: (1, 1),
            ctime: (2, 2),
            names: Vec::new(),
            listing: None,
        };
        let c = Checkpoint {
            root_ino: 2,
            clean: false,
            inodes: (1..=50).map(inode).collect(),
            dirs: (1..=50).map(dir).collect(),
        };
        let b = c.encode();
        assert_eq!(b.len(), META_HDR + 50 * MIN_INODE + 50 * MIN_DIR);
        assert_eq!(Checkpoint::decode(&b).unwrap(), c);
        let only_inodes = Checkpoint {
            dirs: Vec::new(),
            ..c.clone()
        };
        assert_eq!(
            Checkpoint::decode(&only_inodes.encode()).unwrap(),
            only_inodes
        );
    }

    impl InodeRec {
        fn with_id(mut self, id: u64) -> Self {
            self.id = id;
            self.ino = id;
            self
        }
    }

    #[test]
    fn crafted_counts_allocate_nothing_beyond_the_blob() {
        let mut b = sample().encode();
        b[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        let crc = blob_crc(&b);
        b[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(Checkpoint::decode(&b).is_err());
    }
}
