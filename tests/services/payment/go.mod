module payment

go 1.21
