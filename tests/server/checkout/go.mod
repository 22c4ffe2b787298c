module libstock/tests/server/checkout

go 1.21
