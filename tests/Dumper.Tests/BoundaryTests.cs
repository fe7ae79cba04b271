using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace CriuSharp.Dumper.Tests;

/// <summary>
/// The project boundaries as facts: the Dumper sees a kernel only through KernelApi, every project
/// references exactly the projects whose namespaces it uses, and the README's dependency lines say
/// what the project files say.
/// </summary>
public partial class BoundaryTests
{
    private static string RepoRoot()
    {
        var d = new DirectoryInfo(AppContext.BaseDirectory);
        while (d is not null && !File.Exists(Path.Combine(d.FullName, "criu-sharp.sln")))
            d = d.Parent;
        return d?.FullName ?? throw new InvalidOperationException("repository root not found");
    }

    private static readonly string[] SrcProjects = ["KernelApi", "SimKernel", "ImageFormat", "Dumper", "Migration", "Traces", "Cli"];

    /// <summary>Project name → names of the src projects it references, from its csproj.</summary>
    private static SortedSet<string> References(string project)
    {
        var doc = XDocument.Load(Path.Combine(RepoRoot(), "src", project, project + ".csproj"));
        return new SortedSet<string>(doc.Descendants("ProjectReference")
            .Select(e => Path.GetFileNameWithoutExtension(e.Attribute("Include")!.Value)), StringComparer.Ordinal);
    }

    [Fact]
    public void DumperAssembly_DoesNotReferenceTheSimulator()
    {
        var refs = typeof(Criu).Assembly.GetReferencedAssemblies().Select(a => a.Name).ToList();
        Assert.Contains("CriuSharp.KernelApi", refs);
        Assert.DoesNotContain("CriuSharp.SimKernel", refs);
        Assert.DoesNotContain("CriuSharp.Migration", refs);
        Assert.Equal(["ImageFormat", "KernelApi"], References("Dumper"));
    }

    [Fact]
    public void KernelApi_StandsAlone()
    {
        Assert.Empty(References("KernelApi"));
        Assert.DoesNotContain(typeof(IKernel).Assembly.GetReferencedAssemblies(), a => a.Name!.StartsWith("CriuSharp.", StringComparison.Ordinal));
    }

    [GeneratedRegex(@"\bCriuSharp\.(KernelApi|SimKernel|ImageFormat|Dumper|Migration|Traces|Cli)\b")]
    private static partial Regex NamespaceUse();

    [Fact]
    public void EveryProject_ReferencesWhatItsSourcesUse()
    {
        foreach (var p in SrcProjects)
        {
            var used = new SortedSet<string>(StringComparer.Ordinal);
            foreach (var f in Directory.EnumerateFiles(Path.Combine(RepoRoot(), "src", p), "*.cs", SearchOption.AllDirectories))
            {
                if (f.Contains("/obj/", StringComparison.Ordinal) || f.Contains("/bin/", StringComparison.Ordinal))
                    continue;
                foreach (Match m in NamespaceUse().Matches(File.ReadAllText(f)))
                    if (m.Groups[1].Value != p)
                        used.Add(m.Groups[1].Value);
            }
            var refs = References(p);
            Assert.True(used.IsSubsetOf(refs), $"{p} uses {string.Join(", ", used.Except(refs))} without a project reference");
        }
    }

    [GeneratedRegex(@"^\s{4}(\w+)\s+→\s+(.*)$", RegexOptions.Multiline)]
    private static partial Regex DependencyLine();

    [Fact]
    public void ReadmeDependencyLines_MatchTheProjectFiles()
    {
        string readme = File.ReadAllText(Path.Combine(RepoRoot(), "README.md"));
        int at = readme.IndexOf("Dependencies point one way", StringComparison.Ordinal);
        Assert.True(at >= 0, "README has no dependency section");
        var lines = DependencyLine().Matches(readme[at..]).Take(SrcProjects.Length)
            .ToDictionary(m => m.Groups[1].Value, m => m.Groups[2].Value.Trim());
        Assert.Equal(SrcProjects.Order(), lines.Keys.Order());
        foreach (var p in SrcProjects)
        {
            var said = lines[p] == "(nothing)" ? [] : lines[p].Split(',', StringSplitOptions.TrimEntries);
            Assert.Equal(References(p), new SortedSet<string>(said, StringComparer.Ordinal));
        }
    }
}
