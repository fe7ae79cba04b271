using CriuSharp.Cli;

return CliApp.Run(args);
