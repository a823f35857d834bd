import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text()
    setup = re.search(r'```bash\n(.*?)```', readme, re.S).group(1).strip().splitlines()
    assert len(setup) == 2 and 'tsai-ssl demo' in setup[0] and 'pytest' in setup[1]
    assert setup[1] in (ROOT / '.ci' / 'run').read_text().splitlines()
