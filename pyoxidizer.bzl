# PyOxidizer build of an `arrowport` executable, for those who can build online.
#
# PyOxidizer downloads a Python distribution while it builds, so this needs a
# machine with internet access: `pyoxidizer build --release`. It cannot build
# offline, so CI neither builds nor checks it: the supported single binary is
# `packaging/build-binary` (PyInstaller, offline; docs/binary.md). Arrowport's
# dependencies (pyarrow, duckdb, deltalake) ship native extension modules and
# data files (the DuckDB extensions), which cannot be loaded from memory: they
# fall back to files next to the executable (lib/).

def make_exe():
    dist = default_python_distribution(python_version = "3.11")

    policy = dist.make_python_packaging_policy()
    policy.resources_location = "in-memory"
    policy.resources_location_fallback = "filesystem-relative:lib"
    policy.allow_files = True
    policy.file_scanner_classify_files = True

    config = dist.make_python_interpreter_config()
    config.run_module = "arrowport"

    exe = dist.to_python_executable(
        name = "arrowport",
        packaging_policy = policy,
        config = config,
    )
    exe.add_python_resources(exe.pip_install(["."]))
    return exe

def make_install(exe):
    files = FileManifest()
    files.add_python_resource(".", exe)
    return files

register_target("exe", make_exe)
register_target("install", make_install, depends = ["exe"], default = True)

resolve_targets()
