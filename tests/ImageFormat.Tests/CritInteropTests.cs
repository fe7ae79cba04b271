using System.Diagnostics;
using System.Text.Json.Nodes;
using CriuSharp.ImageFormat.Images;
using CriuSharp.ImageFormat.Json;
using Google.Protobuf;

namespace CriuSharp.ImageFormat.Tests;

/// <summary>
/// Interoperability with CRIU's own crit (Debian's criu package; run-tests.sh installs it). These
/// tests fail, not skip, when crit is missing: a silent skip would hide the one check that matters.
/// </summary>
public sealed class CritInteropTests : IDisposable
{
    private readonly TempDir _tmp = new();
    public void Dispose() => _tmp.Dispose();

    private const ulong Heap = 0x1000000;

    private static (int Code, string Out, string Err) Crit(params string[] args)
    {
        var psi = new ProcessStartInfo("crit") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start crit");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    private static JsonNode Decode(string path)
    {
        var (code, output, err) = Crit("decode", "-i", path);
        Assert.True(code == 0, $"crit decode {path} failed: {err}");
        return JsonNode.Parse(output)!;
    }

    /// <summary>A full directory as a dump of one task would leave it, pages compressed with LZ4.</summary>
    private string WriteDumpDir()
    {
        var dir = _tmp.Sub("dump");
        using var d = ImageDirectory.Create(dir);
        d.WriteInventory(TestImages.Inventory());
        d.WritePstree([TestImages.Pstree()]);
        d.WriteCore(TestImages.Pid, TestImages.Core());
        d.WriteIds(TestImages.Pid, new task_kobj_ids_entry { VmId = 1, FilesId = 1, FsId = 1, SighandId = 1 });
        d.WriteMm(TestImages.Pid, TestImages.Mm());
        d.WriteFiles([TestImages.ExeFile()]);
        using (var w = d.BeginPagemap(TestImages.Pid, PageStoreOptions.Lz4(blockPages: 4)))
        {
            w.AddPresent(Heap, TestImages.MixedPages(6, 1), lazy: true);
            w.AddParentHole(Heap + 8 * 4096, 3);
            w.AddPresent(0x7ffd_0000_1000, TestImages.MixedPages(2, 2));
            w.Finish();
        }
        d.WriteDumpStats(TestImages.DumpStats());
        d.WriteRestoreStats(new restore_stats_entry { PagesCompared = 0, PagesSkippedCow = 0, ForkingTime = 5, RestoreTime = 77, PagesRestored = 11 });
        d.Commit();
        return dir;
    }

    [Fact]
    public void CritDecode_ReadsEveryKindWeWrite_AndShowsOurValues()
    {
        var dir = WriteDumpDir();
        string P(string f) => Path.Combine(dir, f);

        var inv = Decode(P("inventory.img"));
        Assert.Equal("INVENTORY", (string)inv["magic"]!);
        Assert.Equal(2, (int)inv["entries"]![0]!["img_version"]!);

        var ps = Decode(P("pstree.img"))["entries"]![0]!;
        Assert.Equal(100, (int)ps["pid"]!);
        Assert.Equal(0, (int)ps["ppid"]!);

        var core = Decode(P("core-100.img"))["entries"]![0]!;
        Assert.Equal("X86_64", (string)core["mtype"]!);
        Assert.Equal("memtouch", (string)core["tc"]!["comm"]!);
        Assert.Equal(0x401000, (long)core["thread_info"]!["gpregs"]!["ip"]!);
        Assert.Equal(1000, (int)core["thread_core"]!["creds"]!["uid"]!);

        var ids = Decode(P("ids-100.img"))["entries"]![0]!;
        Assert.Equal(1, (int)ids["vm_id"]!);

        var mm = Decode(P("mm-100.img"))["entries"]![0]!;
        Assert.Equal(0x400000, (long)mm["mm_start_code"]!);
        Assert.Equal(4, mm["vmas"]!.AsArray().Count);
        Assert.Equal(-1, (int)mm["vmas"]![1]!["fd"]!);

        var pm = Decode(P("pagemap-100.img"))["entries"]!.AsArray();
        Assert.Equal(1, (int)pm[0]!["pages_id"]!);
        Assert.Equal((long)Heap, (long)pm[1]!["vaddr"]!);
        Assert.Equal(6, (int)pm[1]!["nr_pages"]!);
        Assert.Equal(6, (int)pm[1]!["flags"]!);
        Assert.Equal(1, (int)pm[2]!["flags"]!);
        Assert.Equal(4, pm.Count);

        var sd = Decode(P("stats-dump"));
        Assert.Equal("STATS", (string)sd["magic"]!);
        Assert.Equal(80, (int)sd["entries"]![0]!["dump"]!["pages_written"]!);
        var sr = Decode(P("stats-restore"))["entries"]![0]!["restore"]!;
        Assert.Equal(77, (int)sr["restore_time"]!);

        var files = Decode(P("files.img"))["entries"]![0]!;
        Assert.Equal("REG", (string)files["type"]!);
        Assert.Equal("/usr/bin/memtouch", (string)files["reg"]!["name"]!);
    }

    [Fact]
    public void CritX_PsRssMems_WorkOnADirectoryWeWrote()
    {
        var dir = WriteDumpDir();
        var ps = Crit("x", dir, "ps");
        Assert.True(ps.Code == 0, ps.Err);
        Assert.Contains("100", ps.Out);
        Assert.Contains("memtouch", ps.Out);

        var rss = Crit("x", dir, "rss");
        Assert.True(rss.Code == 0, rss.Err);
        // crit prints each VMA that has pages with the page count of the pagemap entries in it.
        // "vaddr / nr_pages" of the first present entry, as crit prints it.
        Assert.Contains("1000000 / 6", rss.Out);

        var mems = Crit("x", dir, "mems");
        Assert.True(mems.Code == 0, mems.Err);
        Assert.Contains("/usr/bin/memtouch", mems.Out);
    }

    public static TheoryData<string> CritKinds() => ["inventory", "pstree", "core", "ids", "mm", "stats-dump", "stats-restore", "files", "regfiles"];

    [Theory]
    [MemberData(nameof(CritKinds))]
    public void WeRead_WhatCritEncodeProduced_FromOurJson(string name)
    {
        var (kind, entries) = RoundTripTests.Sample(name);
        // crit knows no criu-sharp fields, so compare against the entries without them.
        var plain = entries.Select(StripExtensions).ToArray();
        foreach (bool pretty in new[] { false, true })
        {
            var json = _tmp.Sub($"{name}-{pretty}.json");
            File.WriteAllText(json, CritJson.ToJson(kind, plain, pretty));
            var img = _tmp.Sub($"{name}-{pretty}.img");
            var (code, _, err) = Crit("encode", "-i", json, "-o", img);
            Assert.True(code == 0, $"crit encode failed: {err}");
            var back = ImageFile.Read(img, kind);
            Assert.Equal(plain, back.Entries);
            // Fields in ascending order, required ones always present: crit's bytes are ours.
            Assert.Equal(ImageFile.Serialize(kind, plain), File.ReadAllBytes(img));
        }
    }

    [Fact]
    public void WeRead_ACritEncodedPagemap_AndItsRawPages()
    {
        var dir = _tmp.Sub("critdir");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "pm.json"), """
        {"magic": "PAGEMAP", "entries": [{"pages_id": 1},
          {"vaddr": "0x400000", "nr_pages": 2, "flags": "PE_PRESENT"},
          {"vaddr": "0x410000", "nr_pages": 1, "flags": "PE_PARENT"},
          {"vaddr": "0x420000", "nr_pages": 1, "flags": "PE_LAZY | PE_PRESENT"}]}
        """);
        var (code, _, err) = Crit("encode", "-i", Path.Combine(dir, "pm.json"), "-o", Path.Combine(dir, "pagemap-7.img"));
        Assert.True(code == 0, err);
        var pages = TestImages.MixedPages(3, 9);
        File.WriteAllBytes(Path.Combine(dir, "pages-1.img"), pages);
        using var r = ImageSet.Open(dir).OpenPageReader(7);
        Assert.Equal(PageCompression.None, r.Pagemap.Compression);
        var buf = new byte[4096];
        r.ReadPage(0x420000, buf);
        Assert.Equal(pages.AsSpan(2 * 4096, 4096).ToArray(), buf);
        Assert.Equal(PageLocation.Parent, r.Locate(0x410000));
    }

    private static IMessage StripExtensions(IMessage m)
    {
        var c = m.Descriptor.Parser.ParseFrom(m.ToByteArray());
        Strip(c);
        RequiredFields.Fill(c);
        return c;
    }

    private static void Strip(IMessage m)
    {
        foreach (var f in m.Descriptor.Fields.InFieldNumberOrder())
        {
            if (f.FieldNumber >= 1000)
            {
                f.Accessor.Clear(m);
                continue;
            }
            if (f.FieldType != Google.Protobuf.Reflection.FieldType.Message)
                continue;
            if (f.IsRepeated)
            {
                foreach (var item in (System.Collections.IList)f.Accessor.GetValue(m))
                    Strip((IMessage)item!);
            }
            else if (f.Accessor.HasValue(m))
            {
                Strip((IMessage)f.Accessor.GetValue(m));
            }
        }
    }
}
