package main

import (
	"io"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// newLoggers builds the operational logger and the access logger. Neither
// is sampled: zap's sampler would drop access lines past 100 a second.
func newLoggers(w io.Writer, format string, level zap.AtomicLevel) (logger, access *zap.Logger, stop func()) {
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.TimeKey = "ts"
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	encCfg.EncodeDuration = zapcore.SecondsDurationEncoder
	var enc zapcore.Encoder
	if format == "console" {
		encCfg.EncodeLevel = zapcore.CapitalLevelEncoder
		encCfg.EncodeDuration = zapcore.StringDurationEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	out := zapcore.Lock(zapcore.AddSync(w))
	logger = zap.New(zapcore.NewCore(enc, out, level))
	// Access lines are buffered and written at most every 100ms (or per
	// 64 KiB): one write per request would cost a system call per
	// request. Operational messages are written at once. stop flushes.
	buffered := &zapcore.BufferedWriteSyncer{WS: out, Size: 64 << 10, FlushInterval: 100 * time.Millisecond}
	access = zap.New(zapcore.NewCore(enc.Clone(), buffered, level)).Named("access")
	return logger, access, func() { _ = buffered.Stop() }
}
