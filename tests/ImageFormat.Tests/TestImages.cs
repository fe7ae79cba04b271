using CriuSharp.ImageFormat.Images;
using Google.Protobuf;

namespace CriuSharp.ImageFormat.Tests;

/// <summary>Sample messages and memory shaped like what a dump of a small x86_64 task contains.</summary>
internal static class TestImages
{
    public const int Pid = 100;

    public static inventory_entry Inventory() => new()
    {
        ImgVersion = Magic.ImagesV1_1,
        FdinfoPerId = true,
        RootIds = new task_kobj_ids_entry { VmId = 1, FilesId = 1, FsId = 1, SighandId = 1 },
        NsPerId = true,
        Lsmtype = lsmtype.NoLsm,
    };

    public static pstree_entry Pstree(uint pid = Pid, uint ppid = 0) => new() { Pid = pid, Ppid = ppid, Pgid = pid, Sid = pid, Threads = { pid } };

    public static core_entry Core(string comm = "memtouch")
    {
        var gp = new user_x86_regs_entry { Ip = 0x401000, Sp = 0x7ffd_0000_1000, Ax = 42, Cs = 0x33, Ss = 0x2b, Flags = 0x246 };
        var fp = new user_x86_fpregs_entry { Cwd = 0x37f, Mxcsr = 0x1f80, MxcsrMask = 0xffff };
        for (int i = 0; i < 32; i++) fp.StSpace.Add(0);
        for (int i = 0; i < 64; i++) fp.XmmSpace.Add((uint)i);
        return new core_entry
        {
            Mtype = core_entry.Types.march.X8664,
            ThreadInfo = new thread_info_x86 { ClearTidAddr = 0x7f00_0000_0a10, Gpregs = gp, Fpregs = fp },
            Tc = new task_core_entry { TaskState = 1, Comm = comm, Personality = 0, Flags = 0x400100 },
            ThreadCore = new thread_core_entry { FutexRla = 0, FutexRlaLen = 24, Creds = new creds_entry { Uid = 1000, Gid = 1000, Euid = 1000, Egid = 1000 } },
            SimTaskState = ByteString.CopyFrom(1, 2, 3, 4, 5),
        };
    }

    public static vma_entry Vma(ulong start, ulong end, uint status = 0x201, uint flags = 0x22, uint prot = 3) =>
        new() { Start = start, End = end, Pgoff = 0, Shmid = 0, Prot = prot, Flags = flags, Status = status, Fd = -1 };

    /// <summary>Text, heap, stack, and a trailing page-less VMA (crit x rss reads the last VMA's end).</summary>
    public static mm_entry Mm() => new()
    {
        MmStartCode = 0x400000, MmEndCode = 0x401000, MmStartData = 0x600000, MmEndData = 0x601000,
        MmStartStack = 0x7ffd_0000_2000, MmStartBrk = 0x1000000, MmBrk = 0x1010000,
        MmArgStart = 0x7ffd_0000_1f00, MmArgEnd = 0x7ffd_0000_1f10, MmEnvStart = 0x7ffd_0000_1f10, MmEnvEnd = 0x7ffd_0000_1ff0,
        ExeFileId = 1,
        Vmas =
        {
            new vma_entry { Start = 0x400000, End = 0x401000, Prot = 5, Flags = 0x2, Status = 0x41, Shmid = 1, Fd = -1 },
            Vma(0x1000000, 0x1010000, status: 0x221),
            Vma(0x7ffd_0000_0000, 0x7ffd_0000_3000, status: 0x203, flags: 0x122),
            Vma(0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_1000, status: 0x204, prot: 4),
        },
    };

    public static file_entry ExeFile() => new()
    {
        Type = fd_types.Reg,
        Id = 1,
        Reg = new reg_file_entry { Id = 1, Flags = 0, Pos = 0, Name = "/usr/bin/memtouch", Fown = new fown_entry() },
    };

    public static dump_stats_entry DumpStats() => new()
    {
        FreezingTime = 10, FrozenTime = 2000, MemdumpTime = 300, MemwriteTime = 400,
        PagesScanned = 100, PagesSkippedParent = 20, PagesWritten = 80, PagesLazy = 0,
        BytesRaw = 80 * 4096, BytesCompressed = 12345, ZeroPagesSkipped = 7, PagesStoredRaw = 3, Tracker = "soft-dirty", Compression = "lz4",
    };

    /// <summary>
    /// Memory like a real process: zero pages, text, pointer-rich structures and random bytes, in
    /// a mix decided by <paramref name="seed"/>.
    /// </summary>
    public static byte[] MixedPages(int pages, int seed)
    {
        var rnd = new Random(seed);
        var data = new byte[pages * PageGeometry.PageSize];
        for (int p = 0; p < pages; p++)
        {
            var page = data.AsSpan(p * PageGeometry.PageSize, PageGeometry.PageSize);
            switch (rnd.Next(5))
            {
                case 0:
                    break; // zero page
                case 1:
                    FillText(page, rnd);
                    break;
                case 2:
                    FillPointers(page, rnd);
                    break;
                case 3:
                    rnd.NextBytes(page); // incompressible
                    break;
                default:
                    FillText(page, rnd);
                    page[rnd.Next(PageGeometry.PageSize)] ^= 0xff;
                    break;
            }
        }
        return data;
    }

    private static readonly string[] Words = ["the", "page", "dirty", "soft", "restore", "criu", "memory", "process", "checkpoint", "kernel"];

    public static void FillText(Span<byte> page, Random rnd)
    {
        int o = 0;
        while (o < page.Length)
        {
            var w = Words[rnd.Next(Words.Length)];
            for (int i = 0; i < w.Length && o < page.Length; i++)
                page[o++] = (byte)w[i];
            if (o < page.Length)
                page[o++] = (byte)' ';
        }
    }

    public static void FillPointers(Span<byte> page, Random rnd)
    {
        ulong baseAddr = 0x5555_5555_0000UL + (ulong)rnd.Next(1 << 16) * 16;
        for (int o = 0; o + 16 <= page.Length; o += 16)
        {
            BitConverter.TryWriteBytes(page.Slice(o), baseAddr + (ulong)rnd.Next(4096) * 8);
            BitConverter.TryWriteBytes(page.Slice(o + 8), (ulong)rnd.Next(256));
        }
    }
}

/// <summary>A temporary directory removed after the test.</summary>
internal sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "criu-sharp-if-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }
    public string Sub(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
