using System.CommandLine;

namespace EchoKit.Cli
{
    internal static class Program
    {
        public static int Main(string[] args)
        {
            // First, before anything loads the rest of the program (the JIT loads a method's assemblies when
            // it compiles it, so this method references nothing else): enough descriptors to start at all.
            if (StartupLimits.Check() is { } tooLow)
            {
                StartupLimits.WriteError(tooLow);
                return args.Length > 0 && args[0] == "serve" ? ExitCodes.CannotListen : ExitCodes.Error;
            }

            return RunAsync(args).GetAwaiter().GetResult();
        }

        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
        private static async Task<int> RunAsync(string[] args)
        {
            // Whether stdin, stdout and stderr are really there (a closed one has been reused by the runtime).
            StandardStreams.Inspect();

            // Run socket continuations on the runtime's epoll thread instead of hopping to the thread
            // pool: the echo loop never blocks (non-blocking reads and sends, async waits), and the
            // hop was most of the cost per message (compare.sh B: 43k -> 72k msgs/s; A p50: 86 -> 33 us).
            // The runtime reads this once, when the first socket is created, so it must be set first.
            // A value the user set wins.
            if (Environment.GetEnvironmentVariable(InlineCompletions) is null)
            {
                Environment.SetEnvironmentVariable(InlineCompletions, "1");
            }

            var configuration = new ServeConfiguration(args);
            var root = new RootCommand("EchoKit: the TCP echo server, client and load tester.")
            {
                ServeCommand.Create(configuration),
                ConnectCommand.Create(),
                BenchCommand.Create(),
            };

            if (CommandLineHabits.Check(root, args) is { } habit)
            {
                return Fail(ExitCodes.Usage, habit);
            }

            var parsed = root.Parse(args);
            if (parsed.Errors.Count > 0)
            {
                // One line: the first problem, and where to read more.
                string more = parsed.Errors.Count > 1 ? $" (and {parsed.Errors.Count - 1} more)" : "";
                return Fail(ExitCodes.Usage, $"{OneLine(parsed.Errors[0].Message).TrimEnd('.')}{more}; see '{UsageOf(parsed)} --help'");
            }

            if (parsed.CommandResult.Command.Name == "serve" && parsed.Action is not System.CommandLine.Help.HelpAction)
            {
                // Under the command line: the --config file and the ECHOKIT_* environment.
                configuration.Root = root;
                configuration.CommandLine = parsed;
                var (layered, error) = configuration.Layer(parsed);
                if (error is not null)
                {
                    return Fail(ExitCodes.Usage, error);
                }

                foreach (string unknown in layered!.Unknown)
                {
                    Console.Error.WriteLine($"echokit: warning: {unknown}");
                }

                if (parsed.GetValue(configuration.PrintOption))
                {
                    return PrintConfig(ServeConfiguration.Print(layered!.Settings));
                }

                configuration.InForce = layered!.Settings;
                parsed = layered.Result;
            }

            try
            {
                // The serve command owns SIGINT/SIGTERM (graceful drain); System.CommandLine's own handler
                // would cancel the action and kill the process after 2 s, so it is switched off. Its exception
                // handler prints a stack trace; ours below prints one line.
                return await parsed.InvokeAsync(new InvocationConfiguration { ProcessTerminationTimeout = null, EnableDefaultExceptionHandler = false }).ConfigureAwait(false);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                return Fail(ExitCodes.Error, $"unexpected error: {e.Message}");
            }
        }

        private const string InlineCompletions = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

        /// <summary>--print-config's text on stdout: what the user asked for, so a stdout that cannot take it is an error (a reader that went away is not).</summary>
        private static int PrintConfig(string text)
        {
            using var stdout = StandardStreams.OpenOutput();
            if (stdout is null)
            {
                return Fail(ExitCodes.Error, "--print-config: stdout is closed");
            }

            try
            {
                stdout.Write(System.Text.Encoding.UTF8.GetBytes(text));
                return ExitCodes.Ok;
            }
            catch (IOException e) when (e.HResult == EchoKit.Internal.FileErrorText.Epipe)
            {
                return ExitCodes.Ok; // `| head`: the reader has what it wanted
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                return Fail(ExitCodes.Error, $"--print-config: cannot write to stdout: {EchoKit.Internal.FileErrorText.OfWrite(e)}");
            }
        }

        /// <summary>A bad value found after parsing: one line, with where to read more, and exit 2.</summary>
        public static int FailUsage(string command, string message) =>
            Fail(ExitCodes.Usage, $"{message}; see 'echokit {command} --help'");

        /// <summary>Writes the one line a failure gets and returns its exit code.</summary>
        public static int Fail(int exitCode, string message)
        {
            Console.Error.WriteLine($"echokit: {message}");
            return exitCode;
        }

        /// <summary>
        /// System.CommandLine lists suggestions on lines of their own ("Did you mean one of the following?\nAuto\nEpoll");
        /// a usage error is one line: "… following? Auto, Epoll, Socket".
        /// </summary>
        private static string OneLine(string message)
        {
            var lines = message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            return lines.Length <= 1 ? message : $"{lines[0]} {string.Join(", ", lines[1..])}";
        }

        private static string UsageOf(ParseResult parsed)
        {
            var names = new List<string>();
            for (var command = parsed.CommandResult; command is not null; command = command.Parent as System.CommandLine.Parsing.CommandResult)
            {
                names.Insert(0, command.Command is RootCommand ? "echokit" : command.Command.Name);
            }

            return string.Join(' ', names);
        }
    }
}
