using System.Text.Json;
using System.Text.Json.Serialization;

namespace CriuSharp.Cli;

/// <summary>One set of JSON settings for every --json output: snake_case names as CRIU's stats use.</summary>
public static class JsonOut
{
    public static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };
}
