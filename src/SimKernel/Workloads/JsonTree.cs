using System.Text;
using System.Text.Json;

namespace CriuSharp.SimKernel.Workloads;

/// <summary>
/// A parsed JSON value that remembers the line it started on and its path from the root, so every
/// validation error can name the file, the line and the field. System.Text.Json's DOM keeps no
/// positions, so the tree is built from <see cref="Utf8JsonReader"/> token offsets.
/// </summary>
public sealed class JsonNode
{
    public JsonValueKind Kind { get; private init; }
    public int Line { get; private init; }
    /// <summary>Dotted path such as <c>processes[0].mappings[1].size</c>.</summary>
    public string Path { get; private init; } = "";
    public string? String { get; private init; }
    public double Number { get; private init; }
    /// <summary>The number as written, for exact integer parsing (seeds above 2^53).</summary>
    public string? RawNumber { get; private init; }
    public bool Bool { get; private init; }
    public List<JsonNode> Items { get; } = [];
    /// <summary>Object members in file order, each with the line of its property name.</summary>
    public List<(string Name, int Line, JsonNode Value)> Members { get; } = [];

    public JsonNode? Get(string name)
    {
        foreach (var m in Members)
            if (m.Name == name)
                return m.Value;
        return null;
    }

    public override string ToString() => $"{Kind} at line {Line} ({Path})";

    /// <summary>Parses <paramref name="utf8"/>; malformed JSON becomes a <see cref="WorkloadException"/> with the reader's line.</summary>
    public static JsonNode Parse(string file, byte[] utf8)
    {
        var lines = new LineIndex(utf8);
        var reader = new Utf8JsonReader(utf8, new JsonReaderOptions
        {
            CommentHandling = JsonCommentHandling.Skip,
            AllowTrailingCommas = false,
            MaxDepth = 64,
        });
        string path = "";
        try
        {
            if (!reader.Read())
                throw new WorkloadException(file, 1, "(root)", "the file is empty");
            var root = ReadValue(ref reader, lines, "", ref path);
            if (reader.Read())
                throw new WorkloadException(file, lines.LineOf(reader.TokenStartIndex), "(root)", "unexpected content after the top-level value");
            return root;
        }
        catch (JsonException e)
        {
            // The reader counts lines from 0; editors and compilers from 1.
            int line = (int)(e.LineNumber ?? 0) + 1;
            string msg = e.Message;
            int cut = msg.IndexOf(" LineNumber:", StringComparison.Ordinal);
            if (cut > 0)
                msg = msg[..cut].TrimEnd();
            throw new WorkloadException(file, line, path.Length == 0 ? "(root)" : path, "malformed JSON: " + msg);
        }
    }

    private static JsonNode ReadValue(ref Utf8JsonReader r, LineIndex lines, string path, ref string lastPath)
    {
        lastPath = path;
        int line = lines.LineOf(r.TokenStartIndex);
        switch (r.TokenType)
        {
            case JsonTokenType.StartObject:
            {
                var node = new JsonNode { Kind = JsonValueKind.Object, Line = line, Path = path };
                while (r.Read() && r.TokenType != JsonTokenType.EndObject)
                {
                    string name = r.GetString()!;
                    int nameLine = lines.LineOf(r.TokenStartIndex);
                    string childPath = path.Length == 0 ? name : path + "." + name;
                    lastPath = childPath;
                    r.Read();
                    node.Members.Add((name, nameLine, ReadValue(ref r, lines, childPath, ref lastPath)));
                }
                return node;
            }
            case JsonTokenType.StartArray:
            {
                var node = new JsonNode { Kind = JsonValueKind.Array, Line = line, Path = path };
                int i = 0;
                while (r.Read() && r.TokenType != JsonTokenType.EndArray)
                    node.Items.Add(ReadValue(ref r, lines, $"{path}[{i++}]", ref lastPath));
                return node;
            }
            case JsonTokenType.String:
                return new JsonNode { Kind = JsonValueKind.String, Line = line, Path = path, String = r.GetString() };
            case JsonTokenType.Number:
                return new JsonNode
                {
                    Kind = JsonValueKind.Number, Line = line, Path = path, Number = r.GetDouble(),
                    RawNumber = Encoding.UTF8.GetString(r.ValueSpan), // the input is one array, never a sequence
                };
            case JsonTokenType.True:
            case JsonTokenType.False:
                return new JsonNode { Kind = r.TokenType == JsonTokenType.True ? JsonValueKind.True : JsonValueKind.False, Line = line, Path = path, Bool = r.TokenType == JsonTokenType.True };
            default:
                return new JsonNode { Kind = JsonValueKind.Null, Line = line, Path = path };
        }
    }

    /// <summary>Byte offset → 1-based line number, by binary search over the newline offsets.</summary>
    private sealed class LineIndex
    {
        private readonly List<long> _newlines = [];

        public LineIndex(byte[] text)
        {
            for (int i = 0; i < text.Length; i++)
                if (text[i] == (byte)'\n')
                    _newlines.Add(i);
        }

        public int LineOf(long offset)
        {
            int idx = _newlines.BinarySearch(offset);
            return (idx < 0 ? ~idx : idx) + 1;
        }
    }
}
