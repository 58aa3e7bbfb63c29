module github.com/mtlsproxy/mtlsproxy

go 1.26

require (
	github.com/elazarl/goproxy v1.9.4
	go.uber.org/zap v1.28.0
)

require (
	go.uber.org/multierr v1.10.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
	golang.org/x/net v0.50.0 // indirect
	golang.org/x/text v0.34.0 // indirect
)
