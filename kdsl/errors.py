"""Errors a user of kdsl can see: where, what, and what to do."""


class CompileError(Exception):
    """An error in a kernel's source or in how it was launched.

    The message names the file, line and column, shows the source line with a
    caret under the column, and says what went wrong::

        kernels.py:12:15: error: unknown name 'offz'
            x = kl.load(x_ptr + offz, mask=mask)
                                ^
    """

    def __init__(self, message, filename=None, line=None, col=None, source_line=None):
        self.message = message
        self.filename = filename
        self.line = line
        self.col = col
        self.source_line = source_line
        super().__init__(self._format())

    def _format(self):
        if self.line is None:
            return self.message
        text = f"{self.filename}:{self.line}:{self.col}: error: {self.message}"
        if self.source_line is not None:
            shown = self.source_line.rstrip("\n").expandtabs()
            text += f"\n    {shown}\n    {' ' * max(self.col - 1, 0)}^"
        return text


class LaunchError(CompileError):
    """Bad arguments at a kernel launch (count, dtype, grid, device)."""


class BuildError(Exception):
    """The OpenCL driver rejected generated source: shows its log and the file."""

    def __init__(self, kernel_name, source_path, log):
        self.source_path = source_path
        self.log = log
        super().__init__(
            f"OpenCL build of kernel '{kernel_name}' failed; generated source: "
            f"{source_path}\ndriver log:\n{log}")


class OutOfBoundsError(IndexError):
    """An unmasked load or store in the interpreter touched memory outside its tensor."""
