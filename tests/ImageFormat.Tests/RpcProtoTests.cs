using System.Diagnostics;
using CriuSharp.ImageFormat.Rpc;
using Google.Protobuf.Reflection;
using Xunit;

namespace CriuSharp.ImageFormat.Tests;

/// <summary>
/// protos/rpc.proto against CRIU's compiled descriptor (Debian's pycriu/rpc_pb2.py, CRIU 3.17.1):
/// every message, field (number, type, label, default) and enum value CRIU defines is ours too.
/// </summary>
public class RpcProtoTests
{
    private const string Dump = """
        import pycriu.rpc_pb2 as r
        from google.protobuf import descriptor_pb2 as d
        fd = d.FileDescriptorProto(); r.DESCRIPTOR.CopyToProto(fd)
        T = {v: k[5:].lower() for k, v in d.FieldDescriptorProto.Type.items()}
        L = {1: 'optional', 2: 'required', 3: 'repeated'}
        for e in fd.enum_type:
            for v in e.value:
                print('enum %s %s %d' % (e.name, v.name, v.number))
        for m in fd.message_type:
            for f in m.field:
                print('field %s %s %d %s %s %s %s' % (m.name, f.name, f.number, T[f.type], L[f.label], f.type_name.lstrip('.'), f.default_value))
        """;

    [Fact]
    public async Task RpcProto_HasEveryMessageFieldAndEnumValueOfCriusDescriptor()
    {
        var psi = new ProcessStartInfo("/usr/bin/python3") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
        using var p = Process.Start(psi)!;
        p.StandardInput.Write(Dump);
        p.StandardInput.Close();
        var err = p.StandardError.ReadToEndAsync();
        var criu = p.StandardOutput.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(p.WaitForExit(60_000));
        Assert.True(p.ExitCode == 0, "pycriu's rpc_pb2 could not be read (install Debian's criu): " + await err);
        Assert.True(criu.Length > 100, string.Join('\n', criu));

        var ours = new HashSet<string>();
        var file = RpcReflection.Descriptor.ToProto();
        foreach (var e in file.EnumType)
            foreach (var v in e.Value)
                ours.Add($"enum {e.Name} {v.Name} {v.Number}");
        foreach (var m in file.MessageType)
            foreach (var f in m.Field)
            {
                string type = f.Type.ToString().ToLowerInvariant();
                string label = f.Label.ToString().ToLowerInvariant();
                // CRIU 4.x gave images_dir_fd a default of -1 (the images_dir path is used then); 3.17.1 had none.
                string def = m.Name == "criu_opts" && f.Name == "images_dir_fd" ? "" : f.DefaultValue;
                ours.Add($"field {m.Name} {f.Name} {f.Number} {type} {label} {f.TypeName.TrimStart('.')} {def}");
            }
        var missing = criu.Where(l => !ours.Contains(l)).ToList();
        Assert.True(missing.Count == 0, "not as in CRIU's descriptor:\n" + string.Join('\n', missing));
        Assert.Equal(-1, new criu_opts().ImagesDirFd);
    }
}
