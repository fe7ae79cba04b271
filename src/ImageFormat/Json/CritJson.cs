using System.Collections;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Google.Protobuf;
using Google.Protobuf.Reflection;

namespace CriuSharp.ImageFormat.Json;

/// <summary>JSON that cannot be turned into an image (the input's fault, not the image's).</summary>
public sealed class CritJsonException(string message) : Exception(message);

/// <summary>
/// Image ⇄ JSON in crit's shape, <c>{"magic": NAME, "entries": [...]}</c>, so JSON made by crit
/// can be encoded here and ours by crit. Plain mode prints integers as numbers; pretty mode (what
/// <c>crit show</c> prints) uses crit's renderings from CRIU's field options: hex strings,
/// flag names joined by " | ", and the task_state names. Encoding accepts both.
/// </summary>
public static class CritJson
{
    private static readonly (string Name, ulong Value)[] ProtMap = [("PROT_READ", 0x1), ("PROT_WRITE", 0x2), ("PROT_EXEC", 0x4)];
    private static readonly (string Name, ulong Value)[] MmapFlagsMap = [("MAP_SHARED", 0x1), ("MAP_PRIVATE", 0x2), ("MAP_ANON", 0x20), ("MAP_GROWSDOWN", 0x100)];
    private static readonly (string Name, ulong Value)[] VmaStatusMap =
    [
        ("VMA_AREA_NONE", 0), ("VMA_AREA_REGULAR", 1 << 0), ("VMA_AREA_STACK", 1 << 1), ("VMA_AREA_VSYSCALL", 1 << 2),
        ("VMA_AREA_VDSO", 1 << 3), ("VMA_AREA_HEAP", 1 << 5), ("VMA_FILE_PRIVATE", 1 << 6), ("VMA_FILE_SHARED", 1 << 7),
        ("VMA_ANON_SHARED", 1 << 8), ("VMA_ANON_PRIVATE", 1 << 9), ("VMA_AREA_SYSVIPC", 1 << 10), ("VMA_AREA_SOCKET", 1 << 11),
        ("VMA_AREA_VVAR", 1 << 12), ("VMA_AREA_AIORING", 1 << 13), ("VMA_UNSUPP", 1UL << 31),
    ];
    private static readonly (string Name, ulong Value)[] PmapFlagsMap = [("PE_PARENT", 1), ("PE_LAZY", 2), ("PE_PRESENT", 4)];
    private static readonly (string Name, ulong Value)[] RfileFlagsMap =
    [
        ("O_WRONLY", 1), ("O_RDWR", 2), ("O_CREAT", 0x40), ("O_EXCL", 0x80), ("O_NOCTTY", 0x100), ("O_TRUNC", 0x200),
        ("O_APPEND", 0x400), ("O_NONBLOCK", 0x800), ("O_DSYNC", 0x1000), ("FASYNC", 0x2000), ("O_DIRECT", 0x4000),
        ("O_LARGEFILE", 0x8000), ("O_DIRECTORY", 0x10000), ("O_NOFOLLOW", 0x20000), ("O_NOATIME", 0x40000), ("O_CLOEXEC", 0x80000),
    ];
    private static readonly (string Name, ulong Value)[] TaskStateDict = [("Alive", 1), ("Zombie", 3), ("Stopped", 6)];

    // (criu).hex / .flags / .dict options of CRIU's .proto files, which drive crit's pretty output.
    private static readonly HashSet<string> HexFields =
    [
        "thread_info_x86.clear_tid_addr", "thread_info_x86.gpregs", "task_core_entry.blk_sigset",
        "task_core_entry.blk_sigset_extended", "mm_entry.mm_start_code", "mm_entry.mm_end_code", "mm_entry.mm_start_data",
        "mm_entry.mm_end_data", "mm_entry.mm_start_stack", "mm_entry.mm_start_brk", "mm_entry.mm_brk", "mm_entry.mm_arg_start",
        "mm_entry.mm_arg_end", "mm_entry.mm_env_start", "mm_entry.mm_env_end", "vma_entry.start", "vma_entry.end",
        "vma_entry.madv", "vma_entry.fdflags", "pagemap_entry.vaddr",
    ];

    private static (string Name, ulong Value)[]? FlagsOf(FieldDescriptor f) => (f.ContainingType.Name + "." + f.Name) switch
    {
        "vma_entry.prot" => ProtMap,
        "vma_entry.flags" => MmapFlagsMap,
        "vma_entry.status" => VmaStatusMap,
        "pagemap_entry.flags" => PmapFlagsMap,
        "reg_file_entry.flags" => RfileFlagsMap,
        _ => null,
    };

    private static (string Name, ulong Value)[]? DictOf(FieldDescriptor f) =>
        f.ContainingType.Name == "task_core_entry" && f.Name == "task_state" ? TaskStateDict : null;

    private static bool IsHex(FieldDescriptor f) => HexFields.Contains(f.ContainingType.Name + "." + f.Name);

    public static string ToJson(ImageContents image, bool pretty) => ToJson(image.Kind, image.Entries, pretty);

    public static string ToJson(ImageKind kind, IEnumerable<IMessage> entries, bool pretty)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("magic", kind.Name);
            w.WriteStartArray("entries");
            foreach (var e in entries)
                WriteMessage(w, e, pretty, false);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>One message as a JSON object with CRIU's field names (no magic/entries wrapper).</summary>
    public static string MessageToJson(IMessage message, bool pretty)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
            WriteMessage(w, message, pretty, false);
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    private static void WriteMessage(Utf8JsonWriter w, IMessage m, bool pretty, bool hex)
    {
        w.WriteStartObject();
        foreach (var f in m.Descriptor.Fields.InFieldNumberOrder())
        {
            var value = f.Accessor.GetValue(m);
            if (f.IsRepeated)
            {
                var list = (IList)value;
                if (list.Count == 0)
                    continue;
                w.WriteStartArray(f.Name);
                foreach (var item in list)
                    WriteValue(w, f, item!, pretty, hex);
                w.WriteEndArray();
                continue;
            }
            if (!f.Accessor.HasValue(m))
                continue;
            w.WritePropertyName(f.Name);
            WriteValue(w, f, value, pretty, hex);
        }
        w.WriteEndObject();
    }

    private static void WriteValue(Utf8JsonWriter w, FieldDescriptor f, object value, bool pretty, bool inheritedHex)
    {
        bool hex = inheritedHex || IsHex(f);
        switch (f.FieldType)
        {
            case FieldType.Message:
                WriteMessage(w, (IMessage)value, pretty, pretty && hex);
                return;
            case FieldType.Bytes:
                w.WriteStringValue(((ByteString)value).ToBase64());
                return;
            case FieldType.String:
                w.WriteStringValue((string)value);
                return;
            case FieldType.Bool:
                w.WriteBooleanValue((bool)value);
                return;
            case FieldType.Enum:
            {
                int n = (int)value;
                var ev = f.EnumType.FindValueByNumber(n);
                if (ev is null)
                    w.WriteNumberValue(n);
                else
                    w.WriteStringValue(ev.Name);
                return;
            }
            case FieldType.Double:
                w.WriteNumberValue((double)value);
                return;
            case FieldType.Float:
                w.WriteNumberValue((float)value);
                return;
        }
        bool signed = value is int or long;
        long sv = value switch { int i => i, long l => l, _ => 0 };
        ulong uv = value switch { uint u => u, ulong ul => ul, int i => unchecked((ulong)i), long l => unchecked((ulong)l), _ => 0 };
        if (pretty)
        {
            if (hex)
            {
                w.WriteStringValue(signed && sv < 0 ? "-0x" + ((ulong)(-sv)).ToString("x", CultureInfo.InvariantCulture) : "0x" + uv.ToString("x", CultureInfo.InvariantCulture));
                return;
            }
            if (FlagsOf(f) is { } flags)
            {
                w.WriteStringValue(MapFlags(uv, flags));
                return;
            }
            if (DictOf(f) is { } dict)
            {
                foreach (var (name, v) in dict)
                {
                    if (v == uv)
                    {
                        w.WriteStringValue(name);
                        return;
                    }
                }
            }
        }
        if (signed)
            w.WriteNumberValue(sv);
        else
            w.WriteNumberValue(uv);
    }

    private static string MapFlags(ulong value, (string Name, ulong Value)[] map)
    {
        var parts = new List<string>();
        ulong known = 0;
        foreach (var (name, v) in map)
        {
            known |= v;
            if ((value & v) != 0)
                parts.Add(name);
        }
        ulong rest = value & ~known;
        if (rest != 0)
            parts.Add("0x" + rest.ToString("x", CultureInfo.InvariantCulture));
        return string.Join(" | ", parts);
    }

    /// <summary>Parses crit-shaped JSON into the image kind and its entries (required fields checked as crit does).</summary>
    public static (ImageKind Kind, List<IMessage> Entries) FromJson(string json)
    {
        JsonNode? root;
        try
        {
            root = JsonNode.Parse(json);
        }
        catch (JsonException e)
        {
            throw new CritJsonException($"not valid JSON: {e.Message}");
        }
        if (root is not JsonObject obj)
            throw new CritJsonException("expected a JSON object with \"magic\" and \"entries\"");
        var magicName = obj["magic"]?.GetValue<string>() ?? throw new CritJsonException("missing \"magic\"");
        if (!ImageKind.TryFromName(magicName, out var kind))
            throw new CritJsonException($"unknown magic name '{magicName}'");
        var entriesNode = obj["entries"] as JsonArray ?? throw new CritJsonException("missing \"entries\" array");
        var entries = new List<IMessage>();
        for (int i = 0; i < entriesNode.Count; i++)
        {
            var d = kind.DescriptorForEntry(i);
            var msg = d.Parser.ParseFrom(ReadOnlySpan<byte>.Empty);
            if (entriesNode[i] is not JsonObject eo)
                throw new CritJsonException($"entries[{i}] is not an object");
            ReadMessage(eo, msg, $"entries[{i}]");
            var missing = RequiredFields.Missing(msg);
            if (missing.Count > 0)
                throw new CritJsonException($"entries[{i}] ({d.Name}) is missing required fields: {string.Join(",", missing)}");
            entries.Add(msg);
        }
        return (kind, entries);
    }

    private static void ReadMessage(JsonObject o, IMessage m, string where)
    {
        foreach (var f in m.Descriptor.Fields.InFieldNumberOrder())
        {
            // crit ignores keys it does not know; so do we.
            if (!o.TryGetPropertyValue(f.Name, out var node) || node is null)
                continue;
            string at = where + "." + f.Name;
            if (f.IsRepeated)
            {
                if (node is not JsonArray arr)
                    throw new CritJsonException($"{at}: expected an array");
                var list = (IList)f.Accessor.GetValue(m);
                for (int i = 0; i < arr.Count; i++)
                    list.Add(ReadValue(f, arr[i], $"{at}[{i}]"));
                continue;
            }
            f.Accessor.SetValue(m, ReadValue(f, node, at));
        }
    }

    private static object ReadValue(FieldDescriptor f, JsonNode? node, string at)
    {
        if (node is null)
            throw new CritJsonException($"{at}: null is not a value");
        try
        {
            switch (f.FieldType)
            {
                case FieldType.Message:
                {
                    var sub = f.MessageType.Parser.ParseFrom(ReadOnlySpan<byte>.Empty);
                    if (node is not JsonObject so)
                        throw new CritJsonException($"{at}: expected an object");
                    ReadMessage(so, sub, at);
                    return sub;
                }
                case FieldType.Bytes:
                {
                    var text = node.GetValue<string>();
                    var sb = new StringBuilder(text.Length);
                    foreach (char c in text)
                        if (!char.IsWhiteSpace(c))
                            sb.Append(c);
                    return ByteString.FromBase64(sb.ToString());
                }
                case FieldType.String:
                    return node.GetValue<string>();
                case FieldType.Bool:
                    return node.GetValue<bool>();
                case FieldType.Enum:
                {
                    if (node.GetValueKind() == JsonValueKind.Number)
                        return node.GetValue<int>();
                    var name = node.GetValue<string>();
                    var ev = f.EnumType.FindValueByName(name) ?? throw new CritJsonException($"{at}: '{name}' is not a value of {f.EnumType.Name}");
                    return ev.Number;
                }
                case FieldType.Double:
                    return node.GetValue<double>();
                case FieldType.Float:
                    return node.GetValue<float>();
            }
            return ConvertInteger(f, ReadInteger(f, node, at), at);
        }
        catch (Exception e) when (e is InvalidOperationException or FormatException or OverflowException)
        {
            throw new CritJsonException($"{at}: {e.Message}");
        }
    }

    private static Int128 ReadInteger(FieldDescriptor f, JsonNode node, string at)
    {
        if (node.GetValueKind() == JsonValueKind.Number)
        {
            var raw = node.ToJsonString();
            return Int128.Parse(raw, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture);
        }
        var text = node.GetValue<string>();
        if (FlagsOf(f) is { } flags)
        {
            if (text.Length == 0)
                return 0;
            Int128 sum = 0;
            foreach (var part in text.Split('|'))
            {
                var p = part.Trim();
                ulong? v = null;
                foreach (var (name, value) in flags)
                    if (name == p) v = value;
                sum += v is ulong known ? known : ParseBase0(p, at);
            }
            return sum;
        }
        if (DictOf(f) is { } dict)
        {
            foreach (var (name, value) in dict)
                if (name == text) return value;
        }
        return ParseBase0(text, at);
    }

    /// <summary>Python's int(text, 0): decimal, 0x, 0o, 0b, optional sign and underscores.</summary>
    private static Int128 ParseBase0(string text, string at)
    {
        var t = text.Trim().Replace("_", "", StringComparison.Ordinal);
        bool neg = false;
        if (t.StartsWith('-') || t.StartsWith('+'))
        {
            neg = t[0] == '-';
            t = t[1..];
        }
        Int128 v;
        try
        {
            if (t.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
                v = (Int128)UInt128.Parse(t[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture);
            else if (t.StartsWith("0o", StringComparison.OrdinalIgnoreCase))
                v = ParseRadix(t[2..], 8);
            else if (t.StartsWith("0b", StringComparison.OrdinalIgnoreCase))
                v = ParseRadix(t[2..], 2);
            else
                v = Int128.Parse(t, NumberStyles.None, CultureInfo.InvariantCulture);
        }
        catch (FormatException)
        {
            throw new CritJsonException($"{at}: '{text}' is not an integer");
        }
        return neg ? -v : v;
    }

    private static Int128 ParseRadix(string digits, int radix)
    {
        if (digits.Length == 0)
            throw new FormatException();
        Int128 v = 0;
        foreach (char c in digits)
        {
            int d = c - '0';
            if (d < 0 || d >= radix)
                throw new FormatException();
            v = v * radix + d;
        }
        return v;
    }

    private static object ConvertInteger(FieldDescriptor f, Int128 v, string at)
    {
        try
        {
            return f.FieldType switch
            {
                FieldType.UInt32 or FieldType.Fixed32 => checked((uint)v),
                FieldType.UInt64 or FieldType.Fixed64 => checked((ulong)v),
                FieldType.Int32 or FieldType.SInt32 or FieldType.SFixed32 => checked((int)v),
                FieldType.Int64 or FieldType.SInt64 or FieldType.SFixed64 => checked((long)v),
                _ => throw new CritJsonException($"{at}: unsupported field type {f.FieldType}"),
            };
        }
        catch (OverflowException)
        {
            throw new CritJsonException($"{at}: {v} is out of range for {f.FieldType}");
        }
    }
}
