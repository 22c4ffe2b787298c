module libstock/tests/load/crowd

go 1.22
