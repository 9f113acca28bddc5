"""fdl's documentation generator (the Sphinx extension is `fdl_docs.extension`).

`texmath` (Unicode maths to TeX) and `docstrings` (docstrings to MyST/reST) import
no Sphinx, so the tests use them without the docs extra.
"""
