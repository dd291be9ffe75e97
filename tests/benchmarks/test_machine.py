from benchmarks.machine import machine_info, parse_cpuinfo

# Two processors' blocks, trimmed from a real /proc/cpuinfo: only the first is read.
CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: Some Other CPU
flags\t\t: avx512f avx512_bf16
"""


def test_parse_cpuinfo_reads_the_first_cpu_and_its_vector_extensions() -> None:
    info = parse_cpuinfo(CPUINFO)
    assert info == {"cpu": "AMD EPYC", "cpu_family_model": "25/1", "cpu_simd": ["avx2", "fma"]}


def test_parse_cpuinfo_without_fields_says_unknown() -> None:
    assert parse_cpuinfo("") == {"cpu": "unknown", "cpu_family_model": "?/?", "cpu_simd": []}


def test_machine_info_on_this_machine() -> None:
    info = machine_info()
    assert isinstance(info["nproc"], int) and info["nproc"] >= 1
    assert isinstance(info["cpu"], str)
