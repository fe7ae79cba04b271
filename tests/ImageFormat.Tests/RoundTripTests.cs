using CriuSharp.ImageFormat.Images;
using CriuSharp.ImageFormat.Json;
using Google.Protobuf;

namespace CriuSharp.ImageFormat.Tests;

public class RoundTripTests
{
    public static TheoryData<string> Kinds() => ["inventory", "pstree", "core", "ids", "mm", "pagemap", "stats-dump", "stats-restore", "files", "regfiles", "simstate"];

    internal static (ImageKind Kind, IMessage[] Entries) Sample(string name) => name switch
    {
        "inventory" => (ImageKind.Inventory, [TestImages.Inventory()]),
        "pstree" => (ImageKind.Pstree, [TestImages.Pstree(), TestImages.Pstree(101, 100)]),
        "core" => (ImageKind.Core, [TestImages.Core()]),
        "ids" => (ImageKind.Ids, [new task_kobj_ids_entry { VmId = 3, FilesId = 4, FsId = 5, SighandId = 6, PidNsId = 7 }]),
        "mm" => (ImageKind.Mm, [TestImages.Mm()]),
        "pagemap" => (ImageKind.Pagemap,
        [
            new pagemap_head { PagesId = 3, Compression = 1, BlockPages = 4, Checksum = 1, CompressionLevel = 1 },
            new pagemap_entry { Vaddr = 0x1000, NrPages = 5, NrPages64 = 5, Flags = 4, BlockSizes = { 100, 200 }, BlockChecksums = { 1, 2 }, ZeroPages = ByteString.CopyFrom(2) },
            new pagemap_entry { Vaddr = 0x10000, NrPages = 2, Flags = 1 },
        ]),
        "stats-dump" => (ImageKind.Stats, [new stats_entry { Dump = TestImages.DumpStats() }]),
        "stats-restore" => (ImageKind.Stats, [new stats_entry { Restore = new restore_stats_entry { PagesCompared = 1, PagesSkippedCow = 2, ForkingTime = 3, RestoreTime = 4, PagesRestored = 5, BytesRead = 6 } }]),
        "files" => (ImageKind.Files, [TestImages.ExeFile()]),
        "regfiles" => (ImageKind.RegFiles, [TestImages.ExeFile().Reg]),
        "simstate" => (ImageKind.SimState, [new sim_state_entry { Key = "regs", Data = ByteString.CopyFrom(9, 8, 7) }]),
        _ => throw new ArgumentException(name),
    };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EveryKind_RoundTripsThroughBytes(string name)
    {
        var (kind, entries) = Sample(name);
        var bytes = ImageFile.Serialize(kind, entries);
        var back = ImageFile.Parse(bytes, name, kind);
        Assert.Equal(entries, back.Entries);
        var guessed = ImageFile.Parse(bytes, name);
        Assert.Same(kind, guessed.Kind);
        Assert.Equal(bytes, ImageFile.Serialize(kind, back.Entries));
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EveryKind_RoundTripsThroughCritJson(string name)
    {
        var (kind, entries) = Sample(name);
        foreach (var e in entries)
            RequiredFields.Fill(e);
        foreach (bool pretty in new[] { false, true })
        {
            var json = CritJson.ToJson(kind, entries, pretty);
            var (k2, e2) = CritJson.FromJson(json);
            Assert.Same(kind, k2);
            Assert.Equal(entries, e2);
        }
    }

    [Fact]
    public void PrettyJson_UsesCritRenderings()
    {
        var json = CritJson.ToJson(ImageKind.Mm, [TestImages.Mm()], pretty: true);
        Assert.Contains("\"mm_start_code\": \"0x400000\"", json);
        Assert.Contains("\"prot\": \"PROT_READ | PROT_WRITE\"", json);
        Assert.Contains("\"status\": \"VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE\"", json);
        Assert.Contains("\"fd\": -1", json);
        var core = CritJson.ToJson(ImageKind.Core, [TestImages.Core()], pretty: true);
        Assert.Contains("\"task_state\": \"Alive\"", core);
        Assert.Contains("\"ip\": \"0x401000\"", core);
        Assert.Contains("\"mtype\": \"X86_64\"", core);
    }

    [Fact]
    public void JsonEncode_AcceptsCritSpellings()
    {
        const string json = """
        {"magic": "PAGEMAP", "entries": [{"pages_id": 1},
          {"vaddr": "0x400000", "nr_pages": 2, "flags": "PE_PRESENT | PE_LAZY", "unknown_key": 5},
          {"vaddr": 4198400, "nr_pages": "0x1", "flags": ""}]}
        """;
        var (kind, entries) = CritJson.FromJson(json);
        Assert.Same(ImageKind.Pagemap, kind);
        var e1 = (pagemap_entry)entries[1];
        Assert.Equal(0x400000ul, e1.Vaddr);
        Assert.Equal(6u, e1.Flags);
        Assert.Equal(0u, ((pagemap_entry)entries[2]).Flags);
    }

    [Fact]
    public void JsonEncode_MissingRequiredField_IsRejected()
    {
        var ex = Assert.Throws<CritJsonException>(() => CritJson.FromJson("""{"magic":"PSTREE","entries":[{"pid":1}]}"""));
        Assert.Contains("ppid", ex.Message);
    }
}
