"""Check the built sdist and wheel: they hold the package (every file of tsai_ssl/ that git tracks), its metadata,
README, LICENSE and CHANGELOG, and nothing else (no tests, benchmarks, notebooks, docs or results).

    python .ci/check_dist.py DIST_DIR
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SDIST_EXTRA = {'PKG-INFO', 'pyproject.toml', 'setup.cfg', 'README.md', 'LICENSE', 'CHANGELOG.md', 'MANIFEST.in'}


def package_files() -> set[str]:
    "The package as git tracks it: every file under tsai_ssl/."
    out = subprocess.run(['git', 'ls-files', 'tsai_ssl'], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(out.split())


def problems(wheel_names: list[str], sdist_names: list[str], expected: set[str]) -> list[str]:
    "What is wrong with the two archives' file lists (sdist names without their top folder)."
    out = []
    whl = set(wheel_names)
    extra = sorted(n for n in whl if not n.startswith('tsai_ssl/') and '.dist-info/' not in n)
    out += [f'wheel holds {n}, which is not part of the package' for n in extra]
    out += [f'wheel lacks {n}' for n in sorted(expected - whl)]
    sd = set(sdist_names)
    extra = sorted(n for n in sd if not (n.startswith('tsai_ssl/') or n.startswith('tsai_ssl.egg-info/')
                                         or n in SDIST_EXTRA))
    out += [f'sdist holds {n}, which is not part of the package' for n in extra]
    out += [f'sdist lacks {n}' for n in sorted(expected - sd)]
    return out


def main(dist: str) -> int:
    dist = Path(dist)
    wheels, sdists = sorted(dist.glob('*.whl')), sorted(dist.glob('*.tar.gz'))
    if len(wheels) != 1 or len(sdists) != 1:
        print(f'expected one wheel and one sdist in {dist}, found {[p.name for p in dist.iterdir()]}')
        return 1
    wheel_names = [n for n in zipfile.ZipFile(wheels[0]).namelist() if not n.endswith('/')]
    with tarfile.open(sdists[0]) as t:
        sdist_names = [m.name.split('/', 1)[1] for m in t.getmembers() if m.isfile() and '/' in m.name]
    found = problems(wheel_names, sdist_names, package_files())
    for p in found: print(p)
    print(f'{wheels[0].name}: {len(wheel_names)} files; {sdists[0].name}: {len(sdist_names)} files; '
          f'{"OK" if not found else f"{len(found)} problems"}')
    return 1 if found else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
