#!/usr/bin/env python3
"""Sums a flat perf profile (`perf report --stdio --no-children -g none --sort dso,symbol`) by
component, so a profile of the hub reads as "where the CPU of one message goes".

    python3 bench/profile_summary.py bench/results/profile-rm-800.txt

A symbol goes to the first component whose pattern it matches; the patterns are substrings of
demangled Rust and C++ paths and of kernel function names.
"""
import re
import sys

# (component, substrings of the symbol); first match wins.
COMPONENTS = [
    ("crypto: curve25519 (Ed25519 signatures, VOPRF tokens)", ["ed25519", "curve25519", "scalar_mul", "edwards"]),
    ("crypto: Privacy Pass (RSA, VOPRF)", ["crypto_bigint", "blind_rsa", "voprf", "ristretto", "rsa::", "crypto_primes"]),
    ("crypto: HPKE, AEAD, hashes", ["x25519", "hpke", "aes", "ghash", "polyval", "gcm", "sha2", "sha256", "sha512", "hkdf", "hmac", "chacha"]),
    ("storage: RocksDB", ["rocksdb", "snappy", "lz4", "crc32c", "ZSTD", "zstd"]),
    ("TLS, HTTP, async runtime", ["tokio", "hyper", "axum", "h2::", "http::", "tower", "mio::", "rustls", "httparse", "bytes::", "futures"]),
    ("codec (TLS encoding, serde)", ["tls_codec", "serde", "Deserialize", "Serialize"]),
    ("OpenMLS", ["openmls"]),
    ("hub code", ["mimi_ds_rm", "mimi_rm_", "ds_rm::"]),
    ("memory: allocation, copies", ["malloc", "free", "memcpy", "memmove", "memset", "realloc", "alloc::", "__libc_calloc", "core::ptr::drop_in_place"]),
    ("kernel: network", ["tcp_", "ip_", "skb", "sock", "net_", "__dev_queue", "loopback", "netif", "inet_", "sk_", "__sys_sendto", "__sys_recvfrom", "epoll"]),
    ("kernel: files and sync", ["ext4", "jbd2", "blk_", "fsync", "fdatasync", "xfs", "bio_", "filemap", "iomap", "vfs_", "page_cache", "nvme", "virtio_blk", "scsi"]),
    ("kernel: scheduling, futex", ["futex", "schedule", "__switch_to", "finish_task_switch", "try_to_wake_up", "pick_next", "enqueue_task", "dequeue_task", "update_curr"]),
]
LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)$")


def component(dso: str, kind: str, symbol: str) -> str:
    for name, needles in COMPONENTS:
        if any(n in symbol for n in needles):
            return name
    if kind == "k" or dso.startswith("[kernel"):
        return "kernel: other"
    if dso.startswith("libc"):
        return "libc: other"
    return "other"


def main() -> None:
    totals: dict[str, float] = {}
    for line in open(sys.argv[1], encoding="utf-8", errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        pct, dso, kind, symbol = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        key = component(dso, kind, symbol)
        totals[key] = totals.get(key, 0.0) + pct
    listed = sum(totals.values())
    for name, pct in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{pct:6.1f}%  {name}")
    print(f"{listed:6.1f}%  listed (symbols under the report's percent limit are left out)")


if __name__ == "__main__":
    main()
