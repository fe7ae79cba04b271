namespace CriuSharp.SimKernel.Mm;

/// <summary>
/// One swap area (type 0). Slot 0 holds the swap header, so the first pages swapped out get
/// offsets 1, 2, 3… as on a fresh Linux swap file. Each slot has a use count (swap_map): a page
/// shared copy-on-write by a parent and its children is swapped once and referenced by all.
/// </summary>
public sealed partial class SwapDevice
{
    private const int ChunkSlotsShift = 12;
    private readonly int _pageSize;
    private readonly List<byte[]> _chunks = [];
    private byte[] _useCount = new byte[1024];
    private readonly Stack<ulong> _freeSlots = new();
    private ulong _nextSlot = 1;

    public SwapDevice(int pageSize, long capacityBytes)
    {
        _pageSize = pageSize;
        CapacitySlots = (ulong)(capacityBytes / pageSize);
    }

    public static int Type => 0;
    public ulong CapacitySlots { get; }
    public ulong UsedSlots { get; private set; }
    /// <summary>Set when a slot was written since the machine was loaded or saved.</summary>
    internal bool ContentsChanged { get; set; }

    /// <summary>Takes a slot and copies the page into it; returns 0 when swap is full.</summary>
    public ulong Store(ReadOnlySpan<byte> page)
    {
        ulong slot;
        if (_freeSlots.Count > 0)
            slot = _freeSlots.Pop();
        else
        {
            if (_nextSlot > CapacitySlots)
                return 0;
            slot = _nextSlot++;
        }
        Ensure(slot);
        _useCount[slot] = 1;
        UsedSlots++;
        ContentsChanged = true;
        page.CopyTo(Slot(slot));
        return slot;
    }

    public ReadOnlySpan<byte> Read(ulong slot) => Slot(slot);

    public int UseCount(ulong slot) => slot < (ulong)_useCount.Length ? _useCount[slot] : 0;

    public void Duplicate(ulong slot) => _useCount[slot]++;

    public void Release(ulong slot)
    {
        if (--_useCount[slot] == 0)
        {
            UsedSlots--;
            _freeSlots.Push(slot);
        }
    }

    private Span<byte> Slot(ulong slot)
    {
        var chunk = _chunks[(int)(slot >> ChunkSlotsShift)];
        return chunk.AsSpan((int)(slot & ((1UL << ChunkSlotsShift) - 1)) * _pageSize, _pageSize);
    }

    private void Ensure(ulong slot)
    {
        while ((ulong)_chunks.Count <= slot >> ChunkSlotsShift)
            _chunks.Add(new byte[_pageSize << ChunkSlotsShift]);
        if (slot >= (ulong)_useCount.Length)
            Array.Resize(ref _useCount, (int)Math.Max(slot + 1, (ulong)_useCount.Length * 2));
    }
}
