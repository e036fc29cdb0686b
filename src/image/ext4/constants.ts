/**
 * On-disk constants of ext4, named as in the kernel's fs/ext4/ext4.h and e2fsprogs' ext2_fs.h.
 * See https://www.kernel.org/doc/html/latest/filesystems/ext4/ for the layout they describe.
 */

export const BLOCK_SIZE = 4096;
export const LOG_BLOCK_SIZE = 2; // 1024 << 2
export const BLOCKS_PER_GROUP = BLOCK_SIZE * 8;
export const INODE_SIZE = 256;
export const INODES_PER_BLOCK = BLOCK_SIZE / INODE_SIZE;
/** Bytes of the inode beyond the 128-byte base that we use: times' extra bits and crtime. */
export const EXTRA_ISIZE = 32;
export const GROUP_DESC_SIZE = 32;
export const SUPERBLOCK_OFFSET = 1024;

export const EXT4_SUPER_MAGIC = 0xef53;
export const EXTENT_MAGIC = 0xf30a;
export const JBD2_MAGIC = 0xc03b3998;
export const JBD2_SUPERBLOCK_V2 = 4;

export const ROOT_INO = 2;
export const JOURNAL_INO = 8;
export const FIRST_INO = 11;
export const LOST_AND_FOUND_BLOCKS = 4;

export const COMPAT_HAS_JOURNAL = 0x4;
export const COMPAT_EXT_ATTR = 0x8;
export const COMPAT_DIR_INDEX = 0x20;

export const INCOMPAT_FILETYPE = 0x2;
export const INCOMPAT_EXTENTS = 0x40;
export const INCOMPAT_FLEX_BG = 0x200;

export const RO_COMPAT_SPARSE_SUPER = 0x1;
export const RO_COMPAT_LARGE_FILE = 0x2;
export const RO_COMPAT_HUGE_FILE = 0x8;
export const RO_COMPAT_DIR_NLINK = 0x20;
export const RO_COMPAT_EXTRA_ISIZE = 0x40;

export const INODE_FLAG_EXTENTS = 0x80000;

export const S_IFIFO = 0x1000;
export const S_IFCHR = 0x2000;
export const S_IFDIR = 0x4000;
export const S_IFBLK = 0x6000;
export const S_IFREG = 0x8000;
export const S_IFLNK = 0xa000;
export const S_IFSOCK = 0xc000;

/** ext4_dir_entry_2.file_type values. */
export const FT_REG = 1;
export const FT_DIR = 2;
export const FT_CHRDEV = 3;
export const FT_BLKDEV = 4;
export const FT_FIFO = 5;
export const FT_SOCK = 6;
export const FT_SYMLINK = 7;

/** A symlink target shorter than this lives in the inode's i_block ("fast symlink"). */
export const FAST_SYMLINK_MAX = 59;
/** Longest run of blocks one initialized extent can describe. */
export const MAX_EXTENT_LEN = 32768;
export const EXTENTS_IN_INODE = 4;
export const EXTENTS_PER_BLOCK = Math.floor((BLOCK_SIZE - 12) / 12);
/** With dir_nlink, a directory with more subdirectories than this has a link count of 1. */
export const MAX_LINK_COUNT = 65000;

/** ext2fs_default_journal_size() from e2fsprogs: the journal size mke2fs picks, in blocks. */
export function defaultJournalBlocks(totalBlocks: number): number {
  if (totalBlocks < 2048) return 0;
  if (totalBlocks < 32768) return 1024;
  if (totalBlocks < 256 * 1024) return 4096;
  if (totalBlocks < 512 * 1024) return 8192;
  if (totalBlocks < 4096 * 1024) return 16384;
  if (totalBlocks < 8192 * 1024) return 32768;
  if (totalBlocks < 16384 * 1024) return 65536;
  if (totalBlocks < 32768 * 1024) return 131072;
  return 262144;
}
