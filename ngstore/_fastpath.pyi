# Type stub of the CPython extension built from csrc/cpython/fastpath.c.
ABI_VERSION: int
NOT_SIMPLE: int
HIT_SIZE: int

def bind(address: int, /) -> None: ...

class Probe:
    def __init__(self, ctx: int, owner: object, hit_type: type[bytes]) -> None: ...
    def lookup(self, params_address: int, state: object, /) -> bytes | int | None: ...
