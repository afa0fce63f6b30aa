module teachingassistant/tools/gotemplate

go 1.19
