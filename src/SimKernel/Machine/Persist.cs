using System.Runtime.InteropServices;
using CriuSharp.SimKernel.Arch;
using CriuSharp.SimKernel.Mm;
using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Machine
{
    /// <summary>Identity tables for objects shared between tasks (files, shmem, userfaultfd contexts).</summary>
    internal sealed class PersistContext(HugetlbState hugetlb)
    {
        public HugetlbState Hugetlb { get; } = hugetlb;
        public readonly Dictionary<HugetlbReservation, int> ResvIds = new(ReferenceEqualityComparer.Instance);
        public readonly List<HugetlbReservation> Resvs = [];
        public readonly Dictionary<SimFile, int> FileIds = new(ReferenceEqualityComparer.Instance);
        public readonly List<SimFile> Files = [];
        public readonly Dictionary<Userfaultfd, int> UffdIds = new(ReferenceEqualityComparer.Instance);
        public readonly List<Userfaultfd> Uffds = [];

        public int IdOf(SimFile? f)
        {
            if (f is null) return -1;
            if (!FileIds.TryGetValue(f, out int id))
            {
                id = Files.Count;
                FileIds[f] = id;
                Files.Add(f);
            }
            return id;
        }

        /// <summary>The reservation of a private hugetlb mapping is shared by the pieces of a split VMA: saved once.</summary>
        public int IdOf(HugetlbReservation? resv)
        {
            if (resv is null) return -1;
            if (!ResvIds.TryGetValue(resv, out int id))
            {
                id = Resvs.Count;
                ResvIds[resv] = id;
                Resvs.Add(resv);
            }
            return id;
        }

        public int PoolIndex(HugetlbPool? pool)
        {
            if (pool is null) return -1;
            for (int i = 0; i < Hugetlb.Pools.Count; i++)
                if (ReferenceEquals(Hugetlb.Pools[i], pool)) return i;
            throw new InvalidOperationException("a hugetlb pool of another kernel");
        }

        public HugetlbPool? Pool(int index) =>
            index < 0 ? null
            : index < Hugetlb.Pools.Count ? Hugetlb.Pools[index]
            : throw new InvalidDataException($"hugetlb pool {index} out of range");

        public SimFile File(int id) =>
            id < 0 ? throw new InvalidDataException("missing file") : id < Files.Count ? Files[id] : throw new InvalidDataException($"file {id} out of range");

        public int IdOf(Userfaultfd? u)
        {
            if (u is null) return -1;
            if (!UffdIds.TryGetValue(u, out int id))
            {
                id = Uffds.Count;
                UffdIds[u] = id;
                Uffds.Add(u);
            }
            return id;
        }
    }

    internal static class BinaryExt
    {
        // Loading and saving a machine run these loops once per command: compile them optimised on the
        // first call rather than through the tier-0 JIT, which is several times slower per entry.
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public static void WriteArray<T>(this BinaryWriter w, ReadOnlySpan<T> a) where T : unmanaged
        {
            w.Write(a.Length);
            w.Write(MemoryMarshal.AsBytes(a));
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        public static T[] ReadArray<T>(this BinaryReader r, int maxLength = 1 << 28) where T : unmanaged
        {
            int n = r.ReadInt32();
            if (n < 0 || n > maxLength)
                throw new InvalidDataException($"array length {n} out of range");
            var a = new T[n];
            var bytes = MemoryMarshal.AsBytes(a.AsSpan());
            r.BaseStream.ReadExactly(bytes);
            return a;
        }
    }
}

namespace CriuSharp.SimKernel.Mm
{
    using CriuSharp.SimKernel.Machine;

    public sealed unsafe partial class PhysicalMemory
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        internal void Save(BinaryWriter w)
        {
            w.Write(_next);
            w.Write(UsedFrames);
            w.Write(ZeroPfn);
            w.WriteArray<int>(_mapCount.AsSpan(0, (int)_next));
            w.WriteArray<FrameKind>(_kind.AsSpan(0, (int)_next));
            w.WriteArray<long>(_free.AsSpan(0, _freeCount));
            w.WriteArray<long>(_freeHuge.Reverse().ToArray());
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        internal void Load(BinaryReader r)
        {
            _next = r.ReadInt64();
            UsedFrames = r.ReadInt64();
            long zero = r.ReadInt64();
            if (zero != ZeroPfn)
                throw new InvalidDataException("zero page moved");
            var mc = r.ReadArray<int>();
            var kind = r.ReadArray<FrameKind>();
            _free = r.ReadArray<long>();
            _freeCount = _free.Length;
            if (_free.Length == 0) _free = new long[1024];
            _freeHuge.Clear();
            foreach (long h in r.ReadArray<long>())
                _freeHuge.Push(h);
            _mapCount = [];
            _kind = [];
            _dirty = [];
            EnsureCapacity(Math.Max(_next, FirstPfn + 1));
            mc.CopyTo(_mapCount, 0);
            kind.CopyTo(_kind, 0);
            Array.Clear(_dirty);
        }

        /// <summary>Serves frames [FirstPfn, FirstPfn + frames) from a copy-on-write mapping.</summary>
        internal void AttachMapping(byte* basePtr, long frames)
        {
            _mapped = basePtr;
            _mappedFrames = frames;
        }

        internal long FrameCountForFile => _next - FirstPfn;

        /// <summary>Frames written since the last save (or load), in PFN order.</summary>
        internal IEnumerable<long> DirtyFrames()
        {
            for (int w = 0; w < _dirty.Length; w++)
            {
                ulong bits = _dirty[w];
                while (bits != 0)
                {
                    int b = System.Numerics.BitOperations.TrailingZeroCount(bits);
                    bits &= bits - 1;
                    long pfn = ((long)w << 6) + b;
                    if (pfn >= FirstPfn && pfn < _next)
                        yield return pfn;
                }
            }
        }

        internal void ClearDirty() => Array.Clear(_dirty);
    }

    public sealed partial class SwapDevice
    {
        internal void Save(BinaryWriter w)
        {
            w.Write(_nextSlot);
            w.Write(UsedSlots);
            w.WriteArray<byte>(_useCount.AsSpan(0, (int)Math.Min((ulong)_useCount.Length, _nextSlot)));
            w.WriteArray<ulong>(_freeSlots.Reverse().ToArray());
        }

        internal void Load(BinaryReader r)
        {
            _nextSlot = r.ReadUInt64();
            UsedSlots = r.ReadUInt64();
            var uc = r.ReadArray<byte>();
            _useCount = new byte[Math.Max(1024, uc.Length)];
            uc.CopyTo(_useCount, 0);
            _freeSlots.Clear();
            foreach (ulong s in r.ReadArray<ulong>())
                _freeSlots.Push(s);
        }

        /// <summary>Writes the contents of every slot in use: (slot, page) records.</summary>
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        internal void SaveContents(BinaryWriter w)
        {
            ulong n = 0;
            for (ulong s = 1; s < _nextSlot; s++) if (_useCount[s] > 0) n++;
            w.Write(n);
            for (ulong s = 1; s < _nextSlot; s++)
            {
                if (_useCount[s] == 0) continue;
                w.Write(s);
                w.Write(Slot(s));
            }
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        internal void LoadContents(BinaryReader r)
        {
            ulong n = r.ReadUInt64();
            var buf = new byte[_pageSize];
            for (ulong i = 0; i < n; i++)
            {
                ulong s = r.ReadUInt64();
                r.BaseStream.ReadExactly(buf);
                Ensure(s);
                buf.CopyTo(Slot(s));
            }
        }
    }

    public sealed partial class SimFs
    {
        internal void Save(BinaryWriter w, PersistContext ctx)
        {
            w.Write(_nextInode);
            w.Write(_files.Count);
            foreach (var f in _files.Values.OrderBy(f => f.Path, StringComparer.Ordinal))
                w.Write(ctx.IdOf(f));
        }

        internal void Load(BinaryReader r, PersistContext ctx)
        {
            _nextInode = r.ReadUInt64();
            int n = r.ReadInt32();
            _files.Clear();
            for (int i = 0; i < n; i++)
            {
                var f = ctx.File(r.ReadInt32());
                _files[f.Path] = f;
            }
        }
    }

    public sealed partial class SimFile
    {
        internal void Save(BinaryWriter w, PersistContext ctx)
        {
            w.Write(Path);
            w.Write(Inode);
            w.Write(IsShmem);
            w.Write(Size);
            w.Write(ctx.PoolIndex(Hugetlb));
            w.Write(Unlinked);
            w.Write(OpenHandles);
            w.Write(PagesWrittenBack);
            w.Write(Pages.Count);
            foreach (var (idx, pfn) in Pages.OrderBy(kv => kv.Key))
            {
                w.Write(idx);
                w.Write(pfn);
            }
            w.Write(HugePages.Count);
            foreach (var (idx, head) in HugePages.OrderBy(kv => kv.Key))
            {
                w.Write(idx);
                w.Write(head);
            }
            w.WriteArray<long>(HugeReserved.Order().ToArray());
            w.WriteArray<long>(DirtyPages.Order().ToArray());
        }

        internal static SimFile Load(BinaryReader r, PersistContext ctx)
        {
            var f = new SimFile(r.ReadString(), r.ReadUInt64(), r.ReadBoolean()) { Size = r.ReadInt64() };
            f.Hugetlb = ctx.Pool(r.ReadInt32());
            f.Unlinked = r.ReadBoolean();
            f.OpenHandles = r.ReadInt32();
            f.PagesWrittenBack = r.ReadInt64();
            int n = r.ReadInt32();
            for (int i = 0; i < n; i++)
                f.Pages[r.ReadInt64()] = r.ReadInt64();
            n = r.ReadInt32();
            for (int i = 0; i < n; i++)
                f.HugePages[r.ReadInt64()] = r.ReadInt64();
            f.HugeReserved.UnionWith(r.ReadArray<long>());
            f.DirtyPages.UnionWith(r.ReadArray<long>());
            return f;
        }
    }

    public sealed partial class HugetlbPool
    {
        internal void Save(BinaryWriter w)
        {
            w.Write(Nr);
            w.Write(Resv);
            w.Write(Surplus);
            w.Write(Overcommit);
            // Bottom of the stack first, so the loaded pool hands out pages in the same order.
            w.WriteArray<long>(_free.Reverse().ToArray());
            w.WriteArray<long>(_surplusHeads.Order().ToArray());
        }

        internal void Load(BinaryReader r)
        {
            Nr = r.ReadInt64();
            Resv = r.ReadInt64();
            Surplus = r.ReadInt64();
            Overcommit = r.ReadInt64();
            _free.Clear();
            foreach (long head in r.ReadArray<long>())
                _free.Push(head);
            _surplusHeads.Clear();
            _surplusHeads.UnionWith(r.ReadArray<long>());
        }
    }

    public sealed partial class HugetlbState
    {
        internal void Save(BinaryWriter w)
        {
            w.Write(_pools.Count);
            foreach (var p in _pools)
            {
                w.Write(p.Size);
                p.Save(w);
            }
        }

        internal void Load(BinaryReader r)
        {
            int n = r.ReadInt32();
            if (n != _pools.Count)
                throw new InvalidDataException($"{n} hugetlb pools saved, this architecture has {_pools.Count}");
            foreach (var p in _pools)
            {
                if (r.ReadUInt64() != p.Size)
                    throw new InvalidDataException("hugetlb pool sizes differ from the architecture's");
                p.Load(r);
            }
        }
    }

    internal sealed partial class HugetlbReservation
    {
        internal void Save(BinaryWriter w, PersistContext ctx)
        {
            w.Write(ctx.PoolIndex(Pool));
            w.WriteArray<long>(Indexes.Order().ToArray());
        }

        internal static HugetlbReservation Load(BinaryReader r, PersistContext ctx)
        {
            var resv = new HugetlbReservation(ctx.Pool(r.ReadInt32()) ?? throw new InvalidDataException("reservation without a pool"));
            resv.Indexes.UnionWith(r.ReadArray<long>());
            return resv;
        }
    }

    public sealed partial class PageTables
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        internal void Save(BinaryWriter w)
        {
            var tables = new List<(ulong Index, PmdTable T)>();
            for (int g = 0; g < _pgd.Length; g++)
                if (_pgd[g] is { } pud)
                    for (int u = 0; u < 512; u++)
                        if (pud[u] is { } t)
                            tables.Add(((ulong)g * 512 + (ulong)u, t));
            w.Write(tables.Count);
            foreach (var (index, t) in tables)
            {
                w.Write(index);
                w.WriteArray<ulong>(t.Huge);
                ulong present = 0;
                var mask = new ulong[8];
                for (int s = 0; s < 512; s++)
                    if (t.Pte[s] is not null) mask[s >> 6] |= 1UL << (s & 63);
                w.WriteArray<ulong>(mask);
                for (int s = 0; s < 512; s++)
                    if (t.Pte[s] is { } pte) { w.WriteArray<ulong>(pte.E); present++; }
            }
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        internal void Load(BinaryReader r)
        {
            int n = r.ReadInt32();
            for (int i = 0; i < n; i++)
            {
                ulong index = r.ReadUInt64();
                var t = EnsurePmdTable(index << _topShift);
                r.ReadArray<ulong>().CopyTo(t.Huge, 0);
                var mask = r.ReadArray<ulong>();
                for (int s = 0; s < 512; s++)
                {
                    if ((mask[s >> 6] & (1UL << (s & 63))) == 0) continue;
                    var entries = r.ReadArray<ulong>();
                    var pte = new PteTable(_ptrs);
                    for (int e = 0; e < entries.Length; e++)
                        if (entries[e] != 0) Set(pte, e, entries[e]);
                    t.SetTable(s, pte);
                }
            }
        }
    }

    public sealed partial class MmStruct
    {
        internal void Save(BinaryWriter w, PersistContext ctx)
        {
            foreach (ulong v in (ulong[])[StartCode, EndCode, StartData, EndData, StartBrk, Brk, StartStack, ArgStart, ArgEnd, EnvStart, EnvEnd])
                w.Write(v);
            w.Write(ctx.IdOf(ExeFile));
            foreach (long v in (long[])[RssAnon, RssFile, RssShmem, HiwaterRss, SwapEntries, MinorFaults, MajorFaults, WpFaults])
                w.Write(v);
            w.Write(Dead);
            w.Write(HasPinned);
            w.WriteArray<long>(PinnedPfns.Order().ToArray());
            w.Write(_vmas.Count);
            foreach (var v in _vmas)
            {
                w.Write(v.Start); w.Write(v.End); w.Write((ulong)v.Flags);
                w.Write(ctx.IdOf(v.File)); w.Write(v.PgOff);
                w.Write(v.SpecialName ?? ""); w.Write(v.AnonVmaId);
                w.Write(ctx.IdOf(v.Uffd));
                w.Write(ctx.IdOf(v.HugeResv));
            }
            Pt.Save(w);
        }

        internal void Load(BinaryReader r, PersistContext ctx)
        {
            StartCode = r.ReadUInt64(); EndCode = r.ReadUInt64(); StartData = r.ReadUInt64(); EndData = r.ReadUInt64();
            StartBrk = r.ReadUInt64(); Brk = r.ReadUInt64(); StartStack = r.ReadUInt64();
            ArgStart = r.ReadUInt64(); ArgEnd = r.ReadUInt64(); EnvStart = r.ReadUInt64(); EnvEnd = r.ReadUInt64();
            int exe = r.ReadInt32();
            ExeFile = exe < 0 ? null : ctx.File(exe);
            RssAnon = r.ReadInt64(); RssFile = r.ReadInt64(); RssShmem = r.ReadInt64(); HiwaterRss = r.ReadInt64();
            SwapEntries = r.ReadInt64(); MinorFaults = r.ReadInt64(); MajorFaults = r.ReadInt64(); WpFaults = r.ReadInt64();
            Dead = r.ReadBoolean();
            HasPinned = r.ReadBoolean();
            foreach (long p in r.ReadArray<long>()) PinnedPfns.Add(p);
            int n = r.ReadInt32();
            for (int i = 0; i < n; i++)
            {
                var v = new VmArea
                {
                    Start = r.ReadUInt64(), End = r.ReadUInt64(), Flags = (VmaFlags)r.ReadUInt64(),
                };
                int f = r.ReadInt32();
                v.File = f < 0 ? null : ctx.File(f);
                v.PgOff = r.ReadInt64();
                string name = r.ReadString();
                v.SpecialName = name.Length == 0 ? null : name;
                v.AnonVmaId = r.ReadUInt64();
                int u = r.ReadInt32();
                v.Uffd = u < 0 ? null : ctx.Uffds[u];
                int resv = r.ReadInt32();
                v.HugeResv = resv < 0 ? null : resv < ctx.Resvs.Count ? ctx.Resvs[resv] : throw new InvalidDataException($"reservation {resv} out of range");
                _vmas.Add(v);
            }
            Pt.Load(r);
        }
    }
}

namespace CriuSharp.SimKernel.Ipc
{
    using CriuSharp.SimKernel.Machine;

    public sealed partial class SysvShm
    {
        internal void Save(BinaryWriter w, PersistContext ctx)
        {
            w.Write(_nextId);
            w.Write(_segs.Count);
            foreach (var seg in _segs.Values.OrderBy(s => s.Id))
            {
                w.Write(seg.Id);
                w.Write(seg.Key);
                w.Write(seg.Size);
                w.Write(ctx.IdOf(seg.File));
                w.Write(seg.Removed);
            }
        }

        internal void Load(BinaryReader r, PersistContext ctx)
        {
            _nextId = r.ReadInt32();
            int n = r.ReadInt32();
            _segs.Clear();
            for (int i = 0; i < n; i++)
            {
                int id = r.ReadInt32(), key = r.ReadInt32();
                ulong size = r.ReadUInt64();
                var seg = new ShmSegment(id, key, size, ctx.File(r.ReadInt32())) { Removed = r.ReadBoolean() };
                _segs[id] = seg;
            }
        }
    }
}

namespace CriuSharp.SimKernel.Uffd
{
    using CriuSharp.SimKernel.Machine;

    public sealed partial class Userfaultfd
    {
        internal void Save(BinaryWriter w)
        {
            w.Write(ApiDone);
            w.Write(Features);
            w.Write(WriteFaults);
            w.Write(_messages.Count);
            foreach (var m in _messages) { w.Write(m.Address); w.Write(m.WriteProtect); }
        }

        internal static Userfaultfd Load(BinaryReader r, MmStruct owner)
        {
            var u = new Userfaultfd(owner) { ApiDone = r.ReadBoolean(), Features = r.ReadUInt64(), WriteFaults = r.ReadInt64() };
            int n = r.ReadInt32();
            for (int i = 0; i < n; i++)
                u._messages.Enqueue(new UffdMessage(r.ReadUInt64(), r.ReadBoolean()));
            return u;
        }

        internal MmStruct Owner => _mm;
    }
}
