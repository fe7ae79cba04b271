using Google.Protobuf;
using Google.Protobuf.Reflection;

namespace CriuSharp.ImageFormat;

/// <summary>
/// proto2 "required" as CRIU means it: the field is always on the wire, even when it is zero
/// (protobuf-c refuses a message without it, crit and CRIU both always emit it). Google.Protobuf
/// emits a required field only once it has been assigned, so before writing we assign every
/// unassigned required field its declared default, recursively through set sub-messages.
/// </summary>
public static class RequiredFields
{
    public static void Fill(IMessage message)
    {
        foreach (var field in message.Descriptor.Fields.InFieldNumberOrder())
        {
            var accessor = field.Accessor;
            if (field.IsRepeated)
            {
                if (field.FieldType == FieldType.Message)
                {
                    foreach (var item in (System.Collections.IList)accessor.GetValue(message))
                        Fill((IMessage)item!);
                }
                continue;
            }
            if (field.FieldType == FieldType.Message)
            {
                var present = accessor.HasValue(message);
                if (present)
                {
                    Fill((IMessage)accessor.GetValue(message));
                }
                else if (field.IsRequired)
                {
                    var sub = field.MessageType.Parser.ParseFrom(ReadOnlySpan<byte>.Empty);
                    Fill(sub);
                    accessor.SetValue(message, sub);
                }
                continue;
            }
            if (field.IsRequired && !accessor.HasValue(message))
                accessor.SetValue(message, accessor.GetValue(message));
        }
    }

    /// <summary>Names of required fields that are not set (dotted paths), empty when complete.</summary>
    public static List<string> Missing(IMessage message)
    {
        var list = new List<string>();
        Collect(message, "", list);
        return list;
    }

    private static void Collect(IMessage message, string prefix, List<string> list)
    {
        foreach (var field in message.Descriptor.Fields.InFieldNumberOrder())
        {
            var accessor = field.Accessor;
            if (field.IsRepeated)
            {
                if (field.FieldType == FieldType.Message)
                {
                    int i = 0;
                    foreach (var item in (System.Collections.IList)accessor.GetValue(message))
                        Collect((IMessage)item!, $"{prefix}{field.Name}[{i++}].", list);
                }
                continue;
            }
            bool has = accessor.HasValue(message);
            if (!has)
            {
                if (field.IsRequired)
                    list.Add(prefix + field.Name);
                continue;
            }
            if (field.FieldType == FieldType.Message)
                Collect((IMessage)accessor.GetValue(message), prefix + field.Name + ".", list);
        }
    }
}
