// Command otelcol is a minimal OpenTelemetry Collector used by the
// pg-outbox-relay integration tests. It contains only:
//
//	receiver:  otlp      (go.opentelemetry.io/collector/receiver/otlpreceiver)
//	processor: batch     (go.opentelemetry.io/collector/processor/batchprocessor)
//	exporter:  otlphttp  (go.opentelemetry.io/collector/exporter/otlphttpexporter)
//	exporter:  debug     (go.opentelemetry.io/collector/exporter/debugexporter)
//
// It mirrors what the collector builder (ocb) v0.165.0 generates in
// main.go + components.go, folded into one file. Build it with
// scripts/otelcol.sh; run it as `otelcol --config=/path/to/config.yaml`.
package main

import (
	"os"

	"go.opentelemetry.io/collector/component"
	"go.opentelemetry.io/collector/confmap"
	"go.opentelemetry.io/collector/confmap/provider/envprovider"
	"go.opentelemetry.io/collector/confmap/provider/fileprovider"
	"go.opentelemetry.io/collector/exporter"
	"go.opentelemetry.io/collector/exporter/debugexporter"
	"go.opentelemetry.io/collector/exporter/otlphttpexporter"
	"go.opentelemetry.io/collector/otelcol"
	"go.opentelemetry.io/collector/processor"
	"go.opentelemetry.io/collector/processor/batchprocessor"
	"go.opentelemetry.io/collector/receiver"
	"go.opentelemetry.io/collector/receiver/otlpreceiver"
	"go.opentelemetry.io/collector/service/telemetry/otelconftelemetry"
)

// components returns the factories of the components compiled into this binary.
func components() (otelcol.Factories, error) {
	// The service refuses to start without a telemetry factory
	// ("telemetry factory not provided"); ocb uses otelconftelemetry.
	f := otelcol.Factories{Telemetry: otelconftelemetry.NewFactory()}
	var err error
	if f.Receivers, err = otelcol.MakeFactoryMap[receiver.Factory](
		otlpreceiver.NewFactory(),
	); err != nil {
		return otelcol.Factories{}, err
	}
	if f.Processors, err = otelcol.MakeFactoryMap[processor.Factory](
		batchprocessor.NewFactory(),
	); err != nil {
		return otelcol.Factories{}, err
	}
	if f.Exporters, err = otelcol.MakeFactoryMap[exporter.Factory](
		otlphttpexporter.NewFactory(),
		debugexporter.NewFactory(),
	); err != nil {
		return otelcol.Factories{}, err
	}
	return f, nil
}

func main() {
	set := otelcol.CollectorSettings{
		BuildInfo: component.BuildInfo{
			Command:     "otelcol",
			Description: "Minimal OpenTelemetry Collector for pg-outbox-relay tests",
			Version:     "0.165.0",
		},
		Factories: components,
		// --config accepts "file:PATH" (or a bare path) and "env:VAR".
		ConfigProviderSettings: otelcol.ConfigProviderSettings{
			ResolverSettings: confmap.ResolverSettings{
				ProviderFactories: []confmap.ProviderFactory{
					envprovider.NewFactory(),
					fileprovider.NewFactory(),
				},
			},
		},
	}
	// cobra already prints the error; just set the exit code.
	if err := otelcol.NewCommand(set).Execute(); err != nil {
		os.Exit(1)
	}
}
