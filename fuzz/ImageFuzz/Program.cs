using CriuSharp.ImageFormat;
using CriuSharp.ImageFormat.Images;
using CriuSharp.ImageFormat.Json;
using Google.Protobuf;

// Coverage-guided fuzzing of the image readers with SharpFuzz under AFL++ (fuzz/afl.sh). Each
// input is one image file; the readers must either decode it or throw ImageFormatException.
// Any other exception escapes, and AFL++ records the input as a crash.
//
//   criu-sharp-imagefuzz                  read inputs from AFL++ (SharpFuzz's out-of-process runner)
//   criu-sharp-imagefuzz --seeds DIR      write a seed corpus of well-formed images
//   criu-sharp-imagefuzz --replay DIR...  run every file of the directories once (no fuzzer)
if (args.Length >= 2 && args[0] == "--seeds")
{
    Seeds.Write(args[1]);
    return 0;
}
if (args.Length >= 1 && args[0] == "--replay")
{
    int n = 0;
    foreach (var dir in args.Skip(1))
        foreach (var f in Directory.EnumerateFiles(dir).Order(StringComparer.Ordinal))
        {
            Target.Run(File.ReadAllBytes(f));
            n++;
        }
    Console.WriteLine($"replayed {n} inputs, no unexpected exception");
    return 0;
}
SharpFuzz.Fuzzer.OutOfProcess.Run(stream =>
{
    using var ms = new MemoryStream();
    stream.CopyTo(ms);
    Target.Run(ms.ToArray());
});
return 0;

internal static class Target
{
    /// <summary>crit's path through an image: magics, entries, JSON; a pagemap is also indexed.</summary>
    public static void Run(byte[] data)
    {
        try
        {
            var image = ImageFile.Parse(data, "fuzz-input");
            CritJson.ToJson(image, pretty: false);
            if (image.Kind == ImageKind.Pagemap)
                PagemapImage.FromContents(image);
        }
        catch (ImageFormatException)
        {
            // A typed rejection is the expected outcome for malformed input.
        }
    }
}

internal static class Seeds
{
    public static void Write(string dir)
    {
        Directory.CreateDirectory(dir);
        var inventory = new inventory_entry { ImgVersion = Magic.ImagesV1_1, FdinfoPerId = true, NsPerId = true, Lsmtype = lsmtype.NoLsm };
        File.WriteAllBytes(Path.Combine(dir, "inventory.img"), ImageFile.Serialize(ImageKind.Inventory, [inventory]));
        var pstree = new pstree_entry { Pid = 100, Ppid = 0, Pgid = 100, Sid = 100, Threads = { 100 } };
        File.WriteAllBytes(Path.Combine(dir, "pstree.img"), ImageFile.Serialize(ImageKind.Pstree, [pstree]));
        var mm = new mm_entry { MmStartCode = 0x400000, MmEndCode = 0x401000, ExeFileId = 1 };
        mm.Vmas.Add(new vma_entry { Start = 0x400000, End = 0x401000, Prot = 5, Flags = 0x2, Status = 0x41, Fd = -1 });
        mm.Vmas.Add(new vma_entry { Start = 0x1000000, End = 0x1010000, Prot = 3, Flags = 0x22, Status = 0x221, Fd = -1 });
        File.WriteAllBytes(Path.Combine(dir, "mm-100.img"), ImageFile.Serialize(ImageKind.Mm, [mm]));
        foreach (var (name, store) in new[] { ("raw", PageStoreOptions.Raw), ("lz4", PageStoreOptions.Lz4(blockPages: 4)) })
        {
            var pages = new MemoryStream();
            var data = new byte[16 * PageGeometry.PageSize];
            new Random(1).NextBytes(data.AsSpan(0, 6 * PageGeometry.PageSize));
            using var w = new PagemapWriter(pages, 1, store, leaveOpen: true);
            w.AddPresent(0x1000000, data);
            w.Finish();
            var msgs = new List<IMessage> { w.Head };
            msgs.AddRange(w.Entries);
            File.WriteAllBytes(Path.Combine(dir, $"pagemap-{name}.img"), ImageFile.Serialize(ImageKind.Pagemap, msgs));
        }
    }
}
