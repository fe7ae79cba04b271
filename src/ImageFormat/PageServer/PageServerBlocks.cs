using System.Runtime.InteropServices;

namespace CriuSharp.ImageFormat;

/// <summary>
/// Compressed pages on the page-server wire (a criu-sharp extension; CRIU's page-xfer sends raw
/// pages only). An ADD_F whose flags carry <see cref="Flag"/> besides PE_PRESENT is followed not
/// by nr_pages * 4096 raw bytes but by:
/// <code>
///  u32 preamble = codec (1 lz4, 2 zstd) | block_pages &lt;&lt; 8       (block_pages 1..64)
///  per block of block_pages pages (the last may be shorter):
///     u32 word = stored_size | RAW (bit 31)                    stored_size ≤ the codec's bound
///     stored_size bytes: the compressed block, or the raw pages when RAW is set
/// </code>
/// Host byte order, as the header. Only a client told to (<c>--ps-compress</c>) sends it, since a
/// CRIU page server would take the flag for a pagemap flag.
/// </summary>
public static class PageServerBlocks
{
    /// <summary>Bit 15 of ADD_F's flags: the pages follow as compressed blocks.</summary>
    public const uint Flag = 1u << 15;
    private const uint RawBit = 1u << 31;

    /// <summary>Compresses entries for the wire; one per connection (not thread-safe).</summary>
    public sealed class Encoder : IDisposable
    {
        private readonly BlockCodec _codec;
        private readonly PageCompression _compression;
        private readonly int _blockPages;
        private readonly byte[] _stage;
        private readonly byte[] _out;

        public Encoder(PageStoreOptions options)
            : this(options.Compression, options.BlockPages, options.EffectiveLevel)
        {
        }

        private Encoder(PageCompression compression, int blockPages, int level)
        {
            if (compression == PageCompression.None)
                throw new ArgumentException("compressed blocks need a codec", nameof(compression));
            if (blockPages < 1 || blockPages > PageGeometry.MaxBlockPages)
                throw new ArgumentOutOfRangeException(nameof(blockPages), blockPages, $"block_pages must be 1..{PageGeometry.MaxBlockPages}");
            _compression = compression;
            _blockPages = blockPages;
            _codec = new BlockCodec(compression, level);
            _stage = new byte[blockPages * PageGeometry.PageSize];
            _out = new byte[4 + BlockCodec.MaxCompressedSize(compression, _stage.Length)];
        }

        public uint Preamble => (uint)_compression | (uint)_blockPages << 8;
        public int BlockPages => _blockPages;

        /// <summary>
        /// Encodes one block of up to <see cref="BlockPages"/> pages (given by a reader that copies
        /// page <c>i</c> of the block into a span) and returns its wire bytes (size word + data).
        /// </summary>
        public ReadOnlySpan<byte> EncodeBlock(ReadOnlySpan<byte> pages)
        {
            int n = _codec.Compress(pages, _out.AsSpan(4));
            if (n >= pages.Length)
            {
                MemoryMarshal.Write(_out, (uint)pages.Length | RawBit);
                pages.CopyTo(_out.AsSpan(4));
                return _out.AsSpan(0, 4 + pages.Length);
            }
            MemoryMarshal.Write(_out, (uint)n);
            return _out.AsSpan(0, 4 + n);
        }

        /// <summary>A staging buffer of one block for callers whose pages are scattered.</summary>
        public Span<byte> Stage => _stage;

        public void Dispose() => _codec.Dispose();
    }

    /// <summary>Reads and checks the blocks of one entry into <paramref name="dest"/> (nr_pages * 4096 bytes).</summary>
    public sealed class Decoder : IDisposable
    {
        private readonly Dictionary<PageCompression, BlockCodec> _codecs = [];
        private byte[] _in = [];

        private BlockCodec? _codec;
        private int _blockPages;
        private int _bound;

        /// <summary>Reads an entry's preamble; returns the block size in bytes (parts passed to <see cref="ReadBlocks"/> are multiples of it).</summary>
        public int BeginEntry(Stream s)
        {
            Span<byte> word = stackalloc byte[4];
            s.ReadExactly(word);
            uint pre = MemoryMarshal.Read<uint>(word);
            var compression = (PageCompression)(pre & 0xff);
            int blockPages = (int)(pre >> 8);
            if (compression is not (PageCompression.Lz4 or PageCompression.Zstd))
                throw new InvalidDataException($"unknown block codec {pre & 0xff}");
            if (blockPages < 1 || blockPages > PageGeometry.MaxBlockPages)
                throw new InvalidDataException($"block_pages {blockPages} is outside 1..{PageGeometry.MaxBlockPages}");
            if (!_codecs.TryGetValue(compression, out var codec))
                _codecs[compression] = codec = new BlockCodec(compression, 0);
            _codec = codec;
            _blockPages = blockPages;
            _bound = BlockCodec.MaxCompressedSize(compression, blockPages * PageGeometry.PageSize);
            if (_in.Length < _bound)
                _in = new byte[_bound];
            return blockPages * PageGeometry.PageSize;
        }

        /// <summary>Reads the blocks that fill <paramref name="dest"/>; returns the wire bytes consumed. Throws <see cref="InvalidDataException"/> for malformed input.</summary>
        public long ReadBlocks(Stream s, Span<byte> dest)
        {
            if (_codec is null)
                throw new InvalidOperationException("BeginEntry first");
            Span<byte> word = stackalloc byte[4];
            long consumed = 0;
            for (int off = 0; off < dest.Length;)
            {
                int raw = Math.Min(_blockPages * PageGeometry.PageSize, dest.Length - off);
                s.ReadExactly(word);
                uint w = MemoryMarshal.Read<uint>(word);
                int size = (int)(w & ~RawBit);
                bool isRaw = (w & RawBit) != 0;
                if (isRaw ? size != raw : size == 0 || size > _bound)
                    throw new InvalidDataException($"block at page {off / PageGeometry.PageSize} claims {size} bytes{(isRaw ? " raw" : "")} for {raw} bytes of pages");
                if (isRaw)
                {
                    s.ReadExactly(dest.Slice(off, raw));
                }
                else
                {
                    s.ReadExactly(_in, 0, size);
                    if (_codec.TryDecompress(_in.AsSpan(0, size), dest.Slice(off, raw)) is { } why)
                        throw new InvalidDataException($"block at page {off / PageGeometry.PageSize}: {why}");
                }
                consumed += 4 + size;
                off += raw;
            }
            return consumed;
        }

        public void Dispose()
        {
            foreach (var c in _codecs.Values)
                c.Dispose();
        }
    }
}
