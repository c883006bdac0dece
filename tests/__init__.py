"""ttmem's tests. They mirror ``src/ttmem``: ``tests/<package>/test_<module>.py`` tests
``ttmem/<package>/<module>.py``; a file that checks one property across a package's modules is named for
that property (``memory/test_equivalence.py``, ``memory/test_closed_forms.py``); tests of the top-level
modules (``test_cli.py``) and of behaviour that crosses packages (``test_faults.py``) sit here;
``benchmarks/`` tests the scripts in ``benchmarks/``. Shared inputs, references and tiny models are in
``tests.helpers``, imported as ``from tests.helpers.NAME import ...``."""
