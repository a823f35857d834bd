"""The one error class for bad user input (numpy-free, so every layer can raise it without importing torch)."""
from __future__ import annotations

__all__ = ['InputError']


class InputError(ValueError):
    """A problem with the user's data, settings or file: the message says what is wrong, where (series index and
    step in the user's own data when there is one) and what to do next. The CLI prints it as one line, exit 2.

    Example:
        ```python
        try:
            get_ssl_dls([np.array([[1., np.nan, 3.]])])
        except InputError as e:
            print(e)                                   # X[0] has NaN at step 1, inside the series: ...
        ```
    """
