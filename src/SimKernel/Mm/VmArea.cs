using CriuSharp.SimKernel.Uffd;

namespace CriuSharp.SimKernel.Mm;

/// <summary>One virtual memory area: [Start, End) with uniform protection, flags and backing.</summary>
public sealed class VmArea
{
    public ulong Start { get; internal set; }
    public ulong End { get; internal set; }
    public VmaFlags Flags { get; internal set; }
    /// <summary>Backing file; for shared anonymous memory the shmem object. Null for private anonymous memory.</summary>
    public SimFile? File { get; internal set; }
    /// <summary>File offset of <see cref="Start"/>, in pages.</summary>
    public long PgOff { get; internal set; }
    /// <summary>Names of special mappings: [vdso], [vvar]. Heap and stack names are derived from the mm.</summary>
    public string? SpecialName { get; internal set; }
    /// <summary>Identity of the anon_vma; 0 until the first anonymous page. Only compatible VMAs merge.</summary>
    internal ulong AnonVmaId { get; set; }
    /// <summary>The userfaultfd context registered on this VMA, if any.</summary>
    internal Userfaultfd? Uffd { get; set; }
    /// <summary>The pool pages a private hugetlb mapping reserved at mmap (shared by the pieces of a split VMA).</summary>
    internal HugetlbReservation? HugeResv { get; set; }
    /// <summary>VM_HUGETLB: backed by a hugetlbfs file, mapped in whole huge pages from a pool.</summary>
    public bool IsHugetlb => (Flags & VmaFlags.HugeTlb) != 0;

    public ulong Length => End - Start;
    public bool IsShared => (Flags & VmaFlags.Shared) != 0 || (Flags & VmaFlags.MayShare) != 0;
    public bool IsAnonymous => File is null;
    public bool IsShmem => File is { IsShmem: true };
    public bool IsFileBacked => File is { IsShmem: false };
    public bool CanRead => (Flags & VmaFlags.Read) != 0;
    public bool CanWrite => (Flags & VmaFlags.Write) != 0;
    public bool CanExec => (Flags & VmaFlags.Exec) != 0;
    public bool SoftDirtyFlag => (Flags & VmaFlags.SoftDirty) != 0;
    public bool UffdWpRegistered => (Flags & VmaFlags.UffdWp) != 0 && Uffd is not null;

    public Prot Protection =>
        (CanRead ? Prot.Read : 0) | (CanWrite ? Prot.Write : 0) | (CanExec ? Prot.Exec : 0);

    public bool Contains(ulong va) => va >= Start && va < End;

    internal VmArea Clone() => new()
    {
        Start = Start,
        End = End,
        Flags = Flags,
        File = File,
        PgOff = PgOff,
        SpecialName = SpecialName,
        AnonVmaId = AnonVmaId,
        Uffd = Uffd,
        HugeResv = HugeResv,
    };

    public override string ToString() => $"{Start:x}-{End:x} {Flags}";
}
