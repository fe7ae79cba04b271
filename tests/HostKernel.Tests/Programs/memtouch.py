# The Python twin of memtouch.c: one anonymous mmap of N pages with known contents, changed only
# when told over stdin (fill R FIRST COUNT GEN | same R FIRST COUNT | sum), one answer line each.
import ctypes, mmap, struct, sys, zlib

PAGE = 4096
n = int(sys.argv[1]) if len(sys.argv) > 1 else 64
m = mmap.mmap(-1, n * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)

def pattern(i, gen):
    word = struct.pack("<Q", ((i << 32) ^ (gen << 16) ^ (0x9E3779B97F4A7C15 * (i + 1))) & 0xFFFFFFFFFFFFFFFF)
    return word * (PAGE // 8)

for i in range(n):
    m[i * PAGE:(i + 1) * PAGE] = pattern(i, 0)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
print(f"ready {addr:#x} {n}", flush=True)
for line in sys.stdin:
    f = line.split()
    if f and f[0] == "fill":
        a, b, g = int(f[2]), int(f[3]), int(f[4])
        for i in range(a, a + b):
            m[i * PAGE:(i + 1) * PAGE] = pattern(i, g)
        print("ok " + line.strip(), flush=True)
    elif f and f[0] == "same":
        a, b = int(f[2]), int(f[3])
        for i in range(a, a + b):
            m[i * PAGE:(i + 1) * PAGE] = bytes(m[i * PAGE:(i + 1) * PAGE])
        print("ok " + line.strip(), flush=True)
    elif f and f[0] == "sum":
        print(f"ok sum {zlib.crc32(m[:]):08x}", flush=True)
    else:
        print("error " + line.strip(), flush=True)
